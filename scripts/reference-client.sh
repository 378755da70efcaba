#!/usr/bin/env bash
# The reference study's client pattern: 60 batches of 50 real titles (3000 items) POSTed at once
# to a running service; prints items, errors, wall time and items/s.
# usage: scripts/reference-client.sh [BASE_URL]   (default http://127.0.0.1:8000)
set -euo pipefail
url=${1:-http://127.0.0.1:8000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" "$(dirname "$0")/../data/hn_titles.txt" <<'PY'
import json, sys
out, src = sys.argv[1], sys.argv[2]
titles = open(src, encoding="utf-8").read().splitlines()[:3000]
for i in range(60):
    with open(f"{out}/b{i:02}.json", "w") as f:
        json.dump({"titles": titles[i * 50:(i + 1) * 50]}, f)
PY
start=$(date +%s.%N)
ls "$dir"/b*.json | xargs -P 60 -I{} curl -sf -o {}.out -X POST "$url/classify-batch" \
  -H 'content-type: application/json' --data-binary @{}
end=$(date +%s.%N)
python3 - "$dir" "$start" "$end" <<'PY'
import glob, json, sys
d, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
items = errors = batches = 0
for f in glob.glob(f"{d}/*.out"):
    body = json.load(open(f))
    batches += 1; items += body["num_items"]; errors += body["errors"]
wall = end - start
print(f"batches={batches} items={items} errors={errors} wall_s={wall:.2f} items_per_s={items / wall:.0f}")
PY

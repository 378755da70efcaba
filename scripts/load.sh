#!/usr/bin/env bash
# POSTs BATCHES batches of SIZE real titles all at once to running replicas (round-robin over
# the URLs given) and prints items, errors, wall time and items/s; with SIM_URL set, also the
# simulator's counters. Defaults reproduce the reference study's client: 60 batches of 50.
# DISTINCT=1 makes every title distinct past the file's 5,000 (" (2)", " (3)", ... on each pass).
# usage: [BATCHES=60] [SIZE=50] [DISTINCT=0] [SIM_URL=http://127.0.0.1:9000] scripts/load.sh [URL...]
set -euo pipefail
[ $# -gt 0 ] || set -- http://127.0.0.1:8000
urls=("$@")
batches=${BATCHES:-60}
size=${SIZE:-50}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" "$(dirname "$0")/../data/hn_titles.txt" "$batches" "$size" "${DISTINCT:-0}" <<'PY'
import itertools, json, sys
out, src, batches, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = open(src, encoding="utf-8").read().splitlines()
if sys.argv[5] == "1":
    titles = (t if k == 0 else f"{t} ({k + 1})" for k in itertools.count() for t in lines)
else:
    titles = itertools.cycle(lines)
for i in range(batches):
    with open(f"{out}/b{i:04}.json", "w") as f:
        json.dump({"titles": list(itertools.islice(titles, size))}, f)
PY
start=$(date +%s.%N)
i=0
for f in "$dir"/b*.json; do
  echo "$f ${urls[$((i % ${#urls[@]}))]}"
  i=$((i + 1))
done | xargs -P "$batches" -n 2 sh -c 'curl -s -o "$0.out" -X POST "$1/classify-batch" \
  -H "content-type: application/json" --data-binary @"$0"'

end=$(date +%s.%N)
python3 - "$dir" "$start" "$end" "$batches" <<'PY'
import glob, json, sys
d, start, end, expected = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
items = errors = ok = 0
codes = {}
for f in glob.glob(f"{d}/*.out"):
    body = json.load(open(f))
    if "results" not in body:
        print("failed batch:", body); continue
    ok += 1; items += body["num_items"]; errors += body["errors"]
    for r in body["results"]:
        if r.get("error_code"): codes[r["error_code"]] = codes.get(r["error_code"], 0) + 1
wall = end - start
print(f"batches_ok={ok}/{expected} items={items} errors={errors} wall_s={wall:.2f} items_per_s={items / wall:.1f} error_codes={codes}")
PY
if [ -n "${SIM_URL:-}" ]; then
  curl -s "$SIM_URL/_sim/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("sim:", {k: s[k] for k in ("requests_total", "by_status", "faults", "max_in_flight", "ok_window_s")})'
fi

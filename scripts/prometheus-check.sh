#!/usr/bin/env bash
# The alert rules and the Grafana dashboard against a real Prometheus (Debian's package,
# installed when missing): `promtool check rules` and `promtool test rules`, then a Prometheus
# on loopback scraping a running `serve --simulate` under load (429s, retries, refusals, cache
# and single-flight hits), and every query of deploy/grafana/hn-classifier.json must return data.
# usage: [B=target/release/hn-classifier] scripts/prometheus-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${B:-target/release/hn-classifier}
scripts/ensure-deb.sh prometheus promtool

promtool check rules deploy/prometheus/rules.yaml
(cd deploy/prometheus && promtool test rules rules.test.yaml)

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

service_port=$(free_port)
prom_port=$(free_port)
HNC_LISTEN="127.0.0.1:$service_port" HNC_CACHE_ENTRIES=10000 RUST_LOG=warn \
  HNC_SIM_LATENCY_MS=20 HNC_SIM_RPM=1200 HNC_SIM_ERROR_RATE=0.05 HNC_SIM_REFUSAL_RATE=0.02 \
  "$bin" serve --simulate >"$dir/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$service_port/readyz" >/dev/null && break; sleep 0.1; done

cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/deploy/prometheus/rules.yaml
scrape_configs:
  - job_name: hn-classifier
    static_configs:
      - targets: ["127.0.0.1:$service_port"]
EOF
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$dir/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$prom_port/-/ready" >/dev/null && break; sleep 0.1; done

# Load for 20 s: real titles, each batch holding some twice (single-flight) and the same
# batches again (cache).
python3 - "$service_port" data/hn_titles.txt <<'PY'
import json, sys, time, urllib.request, concurrent.futures
port, titles = sys.argv[1], open(sys.argv[2], encoding="utf-8").read().splitlines()
def post(batch):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/classify-batch",
        data=json.dumps({"titles": batch}).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["num_items"]
deadline, n, items = time.time() + 20, 0, 0
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    while time.time() < deadline:
        start = (n % 2) * 100
        batch = titles[start:start + 100]
        batches = [batch + batch[:20] for _ in range(8)]
        items += sum(pool.map(post, batches))
        n += 1
print(f"load: {items} items in {n} rounds")
PY
sleep 3

python3 - "$prom_port" deploy/grafana/hn-classifier.json <<'PY'
import json, sys, urllib.parse, urllib.request
port, dashboard = sys.argv[1], json.load(open(sys.argv[2]))
missing = 0
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        query = urllib.parse.urlencode({"query": target["expr"]})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{query}") as r:
            result = json.load(r)["data"]["result"]
        ok = len(result) > 0
        missing += not ok
        print(f"{'ok  ' if ok else 'NONE'} {len(result):3} series  {panel['title']}: {target['expr']}")
if missing:
    sys.exit(f"{missing} dashboard queries returned no data")
print("every dashboard query returned data")
PY

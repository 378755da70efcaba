#!/usr/bin/env bash
# REPLICAS `serve` processes on one key of one simulator (RPM, 300 ms median latency, sigma 0.5),
# each sent PER_REPLICA distinct real titles as batches of 50, all at once; with REDIS=1 they
# share one redis-server (budget, quotas, cache). Prints load.sh's line, the simulator's counters,
# the share of the ceiling reached, 429s and extra requests, and Redis commands per item.
# usage: [REPLICAS=10] [PER_REPLICA=3000] [REDIS=0|1] [RPM=30000] [EXTRA_ENV="K=V ..."]
#        [B=target/release/hn-classifier] scripts/replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${REPLICAS:-10}
per_replica=${PER_REPLICA:-3000}
rpm=${RPM:-30000}
bin=${B:-target/release/hn-classifier}
base_port=${BASE_PORT:-18100}
sim_port=$((base_port - 1))
redis_port=$((base_port - 2))
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

wait_for() { # url
  for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done
  echo "not up: $1" >&2; return 1
}

"$bin" sim --listen "127.0.0.1:$sim_port" --sim-rpm "$rpm" --sim-latency-ms 300 \
  --sim-latency-sigma 0.5 >"$dir/sim.log" 2>&1 &
pids+=($!)
redis_env=()
if [ "${REDIS:-0}" = 1 ]; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    >"$dir/redis.log" 2>&1 &
  pids+=($!)
  redis_env=("HNC_REDIS_URL=redis://127.0.0.1:$redis_port")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
wait_for "http://127.0.0.1:$sim_port/_sim/stats"
urls=()
for i in $(seq "$replicas"); do
  port=$((base_port + i))
  # shellcheck disable=SC2086 # EXTRA_ENV is a list of assignments
  env OPENAI_API_KEY=sk-bench OPENAI_BASE_URL="http://127.0.0.1:$sim_port/v1" \
    HNC_LISTEN="127.0.0.1:$port" RUST_LOG=warn "${redis_env[@]}" ${EXTRA_ENV:-} \
    "$bin" serve >"$dir/replica$i.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
for url in "${urls[@]}"; do wait_for "$url/readyz"; done

out=$(BATCHES=$((replicas * per_replica / 50)) SIZE=50 DISTINCT=1 \
  SIM_URL="http://127.0.0.1:$sim_port" scripts/load.sh "${urls[@]}")
echo "$out"
for url in "${urls[@]}"; do curl -s "$url/metrics"; done >"$dir/metrics.txt"
python3 - "$out" "$rpm" "$dir/metrics.txt" "$replicas" <<'PY'
import re, sys
out, rpm, metrics, replicas = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read(), int(sys.argv[4])
items = int(re.search(r"items=(\d+)", out).group(1))
rate = float(re.search(r"items_per_s=([\d.]+)", out).group(1))
total = int(re.search(r"'requests_total': (\d+)", out).group(1))
limited = re.search(r"'429': (\d+)", out)
limited = int(limited.group(1)) if limited else 0
ok = int(re.search(r"'200': (\d+)", out).group(1))
window = float(re.search(r"'ok_window_s': ([\d.]+)", out).group(1))
def total_of(name):
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M))
commands, errors = total_of("redis_commands_total"), total_of("redis_errors_total")
print(f"replicas={replicas} share_of_ceiling={rate / (rpm / 60):.1%} "
      f"ridden_share={(ok - 1) / max(window, 1e-9) / (rpm / 60):.1%} provider_429s={limited} "
      f"429s_per_request={limited / max(total, 1):.2%} extra_requests={(total - items) / max(items, 1):.1%} "
      f"redis_commands_per_item={commands / max(items, 1):.3f} redis_errors={errors:.0f}")
PY

#!/usr/bin/env bash
# hn-classifier against the Python reference service (bench/reference: FastAPI + the openai
# SDK's async client, one uvicorn worker), one after the other under the same load from
# `hn-classifier bench --approach service`, both calling the same simulator. Prints items/s,
# items per CPU-second of the server process, its peak RSS and errors, and the ratios.
# Installs the reference's dependencies in a cached venv on first run.
#
# The default load keeps 4 batches (200 calls) in flight: with the reference client's 60 batches
# at once (3000 calls) and zero latency, the reference spends minutes at 100% CPU queueing for
# the SDK's 1000-connection pool (see docs/BENCHMARKS.md), which measures that pathology rather
# than its per-item cost.
#
# usage: [ITEMS=3000] [BATCH=50] [CONCURRENCY=4] [LATENCY_MS=0] [REPEAT=3] bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

items=${ITEMS:-3000}
batch=${BATCH:-50}
concurrency=${CONCURRENCY:-4}
latency=${LATENCY_MS:-0}
repeat=${REPEAT:-3}

venv="${XDG_CACHE_HOME:-$HOME/.cache}/hn-classifier/reference-venv-$(sha256sum bench/reference/requirements.txt | cut -c1-12)"
if [ ! -x "$venv/bin/uvicorn" ]; then
  echo "compare: installing the reference's dependencies into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/reference/requirements.txt
fi
[ -x target/release/hn-classifier ] || cargo build --locked --release
bin=target/release/hn-classifier
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_healthy() {
  for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.05; done
  echo "compare: $1 never became healthy" >&2; exit 1
}
# User plus system CPU seconds of every thread of $1 (USER_HZ is 100 on Linux).
cpu_seconds() { awk '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / 100 }' "/proc/$1/stat"; }
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status"; }

sim_port=$(free_port)
RUST_LOG=warn "$bin" sim --listen "127.0.0.1:$sim_port" --sim-latency-ms "$latency" >/dev/null 2>&1 &
pids+=($!)
sim="http://127.0.0.1:$sim_port"
wait_healthy "$sim/_sim/stats"

# measure NAME PID URL: a warm-up, then REPEAT runs of the load; prints one summary line.
measure() {
  local name=$1 pid=$2 url=$3
  "$bin" bench --approach service --service-url "$url" --items 200 --batch-size "$batch" \
    --concurrency 4 --titles data/hn_titles.txt --results-dir "$work/warmup" >/dev/null 2>&1
  echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true
  local cpu0 cpu1
  cpu0=$(cpu_seconds "$pid")
  "$bin" bench --approach service --service-url "$url" --items "$items" --batch-size "$batch" \
    --concurrency "$concurrency" --repeat "$repeat" --titles data/hn_titles.txt \
    --sim-latency-ms "$latency" --results-dir "$work/$name" >/dev/null 2>"$work/$name.log" \
    || { cat "$work/$name.log" >&2; exit 1; }
  cpu1=$(cpu_seconds "$pid")
  python3 - "$name" "$work/$name/service.csv" "$cpu0" "$cpu1" "$(peak_rss_mib "$pid")" <<'PY'
import csv, sys
name, path, cpu0, cpu1, rss = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rows = list(csv.DictReader(open(path)))
items = sum(int(r["items"]) for r in rows)
wall = sum(float(r["wall_s"]) for r in rows)
errors = sum(int(r["errors"]) for r in rows)
cpu = cpu1 - cpu0
best = max(float(r["items_per_s"]) for r in rows)
print(f"{name} {items} {wall:.3f} {errors} {cpu:.2f} {rss} {best:.1f}")
PY
}

ref_port=$(free_port)
OPENAI_BASE_URL="$sim/v1" OPENAI_API_KEY=sim-key "$venv/bin/uvicorn" app:app \
  --app-dir bench/reference --host 127.0.0.1 --port "$ref_port" --workers 1 \
  --log-level warning --no-access-log &
ref_pid=$!
pids+=($ref_pid)
wait_healthy "http://127.0.0.1:$ref_port/healthz"
reference=$(measure reference "$ref_pid" "http://127.0.0.1:$ref_port")
kill "$ref_pid"

our_port=$(free_port)
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$our_port" --openai-base-url "$sim/v1" \
  --openai-api-key sim-key >/dev/null 2>&1 &
our_pid=$!
pids+=($our_pid)
wait_healthy "http://127.0.0.1:$our_port/healthz"
ours=$(measure hn-classifier "$our_pid" "http://127.0.0.1:$our_port")
kill "$our_pid"

python3 - "$reference" "$ours" "$items" "$batch" "$concurrency" "$latency" "$repeat" <<'PY'
import sys
ref, ours = (line.split() for line in sys.argv[1:3])
items, batch, conc, latency, repeat = sys.argv[3:8]
print(f"load: {repeat} x {items} titles as batches of {batch}, {conc} batches in flight; "
      f"simulator median latency {latency} ms; one server process each")
print(f"{'server':<14} {'items':>6} {'items/s':>9} {'best run':>9} {'errors':>6} {'CPU-s':>7} "
      f"{'items/CPU-s':>12} {'peak RSS MiB':>13}")
rows = {}
for name, n, wall, errors, cpu, rss, best in (ref, ours):
    n, wall, cpu = int(n), float(wall), float(cpu)
    per_cpu = n / cpu if cpu > 0 else float("inf")
    rows[name] = (n / wall, per_cpu, float(rss))
    print(f"{name:<14} {n:>6} {n / wall:>9.1f} {float(best):>9.1f} {errors:>6} {cpu:>7.2f} "
          f"{per_cpu:>12.0f} {float(rss):>13.1f}")
(r_rate, r_cpu, r_rss), (o_rate, o_cpu, o_rss) = rows["reference"], rows["hn-classifier"]
print(f"ratios (hn-classifier / reference): items/s {o_rate / r_rate:.1f}x, "
      f"items per CPU-second {o_cpu / r_cpu:.1f}x, peak RSS {o_rss / r_rss:.2f}x")
PY

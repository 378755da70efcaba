#!/usr/bin/env bash
# CPU time a `serve` process spends per item with the upstream out of the way: the simulator in
# its own process at zero latency, the cache off and every title distinct (so every item is an
# upstream call), a warm-up round, then ROUNDS rounds of 20 batches of 500 at once; the
# service's user + system ticks from /proc/PID/stat around the measured rounds.
# SIM_BIN runs the simulator from another build, so that two builds of the service are compared
# against the same simulator (its speed changes how many answers each wake-up of the service
# reads).
# usage: [BIN=target/release/hn-classifier] [SIM_BIN=$BIN] [ROUNDS=5] [HNC_UPSTREAM_HTTP2=...]
#        scripts/cpu-per-item.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/hn-classifier}
rounds=${ROUNDS:-5}
[ -x "$bin" ] || cargo build --locked --release
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_port=$(port); our_port=$(port)
RUST_LOG=warn "${SIM_BIN:-$bin}" sim --listen "127.0.0.1:$sim_port" --sim-latency-ms 0 >/dev/null 2>&1 &
sim_pid=$!
HNC_CACHE_ENTRIES=0 RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$our_port" \
  --openai-base-url "http://127.0.0.1:$sim_port/v1" --openai-api-key sim-key >/dev/null 2>&1 &
our_pid=$!
trap 'kill $sim_pid $our_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$our_port/healthz" >/dev/null && break; sleep 0.05; done
ticks() { awk '{ print $14 + $15 }' "/proc/$our_pid/stat"; }
BATCHES=20 SIZE=500 DISTINCT=1 scripts/load.sh "http://127.0.0.1:$our_port" >/dev/null
before=$(ticks)
for _ in $(seq "$rounds"); do
  BATCHES=20 SIZE=500 DISTINCT=1 scripts/load.sh "http://127.0.0.1:$our_port" | grep -o 'errors=[0-9]*' | grep -v 'errors=0$' || true
done
after=$(ticks)
hz=$(getconf CLK_TCK)
python3 -c "cpu = ($after - $before) / $hz; items = $rounds * 10000; print(f'items={items} cpu_s={cpu:.2f} cpu_per_item_us={cpu / items * 1e6:.1f}')"

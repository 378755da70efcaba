#!/usr/bin/env bash
# Items lost to a provider outage: the simulator (200 ms a call) is killed (SIGKILL) OUTAGE
# seconds into a run of ITEMS distinct real titles (batches of 100, 8 at once, plain JSON),
# kept down for each of OUTAGES seconds, then started again on the same port. Each service
# (BINS, e.g. an older and a newer build; REF=1 adds the Python reference service of
# bench/reference with the openai SDK's default two retries) meets the same outages in turn.
# Prints, per service and outage: items, item errors by code, wall time, and whether /readyz
# stayed 200 (sampled every 200 ms during the outage).
# usage: [ITEMS=6000] [OUTAGES="3 10"] [AFTER=1.5] [BINS="target/release/hn-classifier"] [REF=1]
#        scripts/outage-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
items=${ITEMS:-6000}
outages=${OUTAGES:-"3 10"}
after=${AFTER:-1.5}
bins=${BINS:-target/release/hn-classifier}
for bin in $bins; do [ -x "$bin" ] || cargo build --locked --release; done
sim_bin=${bins##* }
work=$(mktemp -d)
pids=()
sim_pid=
cleanup() { kill "${pids[@]}" $sim_pid 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.05; done; echo "never up: $1" >&2; exit 1; }

if [ "${REF:-0}" = 1 ]; then
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/hn-classifier/reference-venv-$(sha256sum bench/reference/requirements.txt | cut -c1-12)"
  if [ ! -x "$venv/bin/uvicorn" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/reference/requirements.txt
  fi
fi

start_sim() { # PORT
  RUST_LOG=warn "$sim_bin" sim --listen "127.0.0.1:$1" --sim-latency-ms 200 --sim-latency-sigma 0 \
    >/dev/null 2>&1 &
  sim_pid=$!
  disown "$sim_pid"  # killed on purpose: no job-control notice
  wait_up "http://127.0.0.1:$1/_sim/stats"
}

run() { # NAME OUTAGE_S HEALTH_PATH START_COMMAND...
  local name=$1 outage=$2 health=$3
  shift 3
  local sim_port our_port
  sim_port=$(port); our_port=$(port)
  start_sim "$sim_port"
  SIM="http://127.0.0.1:$sim_port/v1" PORT_="$our_port" "$@" &
  local pid=$!
  pids+=($pid)
  wait_up "http://127.0.0.1:$our_port$health"
  python3 - "http://127.0.0.1:$our_port" "$items" "$after" "$outage" "$sim_port" "$sim_pid" "$sim_bin" <<'PY' &
import concurrent.futures, json, os, signal, subprocess, sys, threading, time, urllib.request
base, total, after, outage, sim_port, sim_pid, sim_bin = sys.argv[1:8]
total, after, outage = int(total), float(after), float(outage)
lines = [l for l in open("data/hn_titles.txt", encoding="utf-8").read().splitlines() if l.strip()]
titles = [f"{lines[i % len(lines)]} [{i}]" for i in range(total)]
def post(chunk):
    req = urllib.request.Request(base + "/classify-batch", json.dumps({"titles": chunk}).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["results"]
readiness = []
def outage_thread():
    time.sleep(after)
    os.kill(int(sim_pid), signal.SIGKILL)
    down = time.time()
    while time.time() - down < outage:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                readiness.append(r.status)
        except urllib.error.HTTPError as e:
            readiness.append(e.code)
        time.sleep(0.2)
    subprocess.Popen([sim_bin, "sim", "--listen", f"127.0.0.1:{sim_port}", "--sim-latency-ms", "200",
                      "--sim-latency-sigma", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env={**os.environ, "RUST_LOG": "warn"})
killer = threading.Thread(target=outage_thread)
start = time.time()
killer.start()
chunks = [titles[i:i + 100] for i in range(0, total, 100)]
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = [r for batch in pool.map(post, chunks) for r in batch]
wall = time.time() - start
killer.join()
codes = {}
for r in results:
    if r.get("error"):
        code = r.get("error_code") or r["error"].split(":")[0][:40]
        codes[code] = codes.get(code, 0) + 1
if all(s == 404 for s in readiness):
    ready = "n/a (no /readyz)"
elif all(s == 200 for s in readiness):
    ready = "yes"
else:
    ready = f"no ({sum(s != 200 for s in readiness)} of {len(readiness)} samples not 200)"
print(json.dumps({"items": len(results), "errors": sum(codes.values()), "codes": codes,
                  "wall_s": round(wall, 1), "ready_throughout": ready}))
PY
  local client=$!
  wait "$client"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pkill -f "sim --listen 127.0.0.1:$sim_port" 2>/dev/null || true
  sim_pid=
}

for outage in $outages; do
  for bin in $bins; do
    printf '%-40s outage %3ss  ' "$bin" "$outage"
    run "$bin" "$outage" /readyz sh -c 'RUST_LOG=warn exec "$0" serve --listen "127.0.0.1:$PORT_" --openai-base-url "$SIM" --openai-api-key sim-key >/dev/null 2>&1' "$bin"
  done
  if [ "${REF:-0}" = 1 ]; then
    printf '%-40s outage %3ss  ' "reference (FastAPI + openai SDK)" "$outage"
    run reference "$outage" /docs sh -c 'OPENAI_BASE_URL="$SIM" OPENAI_API_KEY=sim-key exec "$0/bin/uvicorn" app:app --app-dir bench/reference --host 127.0.0.1 --port "$PORT_" --workers 1 --log-level warning --no-access-log' "$venv"
  fi
done

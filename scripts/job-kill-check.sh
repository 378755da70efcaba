#!/usr/bin/env bash
# A replica SIGKILLed while it runs a job; the simulator in its own process so its count of calls
# spans the whole run. Passes when the job completes with every title answered once, in input
# order, and the calls add up to at most the titles plus the calls in flight at the kill (one
# round: 200).
# - Without REDIS: one replica on a data directory, started again on it after the kill.
# - With REDIS=1: two replicas sharing a redis-server (append-only file on, fsync every second);
#   the job goes to the first, which is killed; the second finishes it, taking over the killed
#   one's chunk when its lease lapses (6 s).
# usage: [BIN=target/release/hn-classifier] [TITLES=3000] [REDIS=0|1] scripts/job-kill-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_port=$(port); our_port=$(port); other_port=$(port); redis_port=$(port); work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
latency=${LATENCY_MS:-50}
RUST_LOG=warn "$bin" sim --listen "127.0.0.1:$sim_port" --sim-latency-ms "$latency" --sim-latency-sigma 0 >/dev/null 2>&1 &
pids+=($!)
keep=(HNC_DATA_DIR="$work")
if [ "${REDIS:-0}" = 1 ]; then
  scripts/ensure-deb.sh redis-server
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync everysec --dir "$work" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  keep=(HNC_REDIS_URL="redis://127.0.0.1:$redis_port")
fi
serve() { # port; sets served_pid
  env "${keep[@]}" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$1" \
    --openai-base-url "http://127.0.0.1:$sim_port/v1" --openai-api-key sim-key >>"$work/serve.log" 2>&1 &
  served_pid=$!
  pids+=("$served_pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && break; sleep 0.05; done
}
serve "$our_port"; doomed=$served_pid
if [ "${REDIS:-0}" = 1 ]; then serve "$other_port"; heir_port=$other_port; else heir_port=$our_port; fi
python3 - "$our_port" "$sim_port" "${TITLES:-3000}" "$work" <<'PY'
import json, sys, time, urllib.request
ours, sim, n, work = f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{sys.argv[2]}", int(sys.argv[3]), sys.argv[4]
titles = [l.rstrip("\n") for l in open("data/hn_titles.txt")]
job_titles = [f"{titles[i % len(titles)]} (#{i})" for i in range(n)]
def call(url, body=None):
    req = urllib.request.Request(url, json.dumps(body).encode() if body else None, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()
job = json.loads(call(ours + "/jobs", {"titles": job_titles}))
start = time.monotonic()
while json.loads(call(f"{ours}/jobs/{job['id']}"))["counts"]["done"] < n // 5:
    time.sleep(0.05)
time.sleep(0.12)  # into the next round: its calls are in flight at the kill
done = json.loads(call(f"{ours}/jobs/{job['id']}"))["counts"]["done"]
open(f"{work}/job", "w").write(f"{job['id']} {done} {time.monotonic() - start:.2f}\n")
PY
read -r id done_at_kill killed_after <"$work/job"
kill -9 "$doomed"; wait "$doomed" 2>/dev/null || true
killed_at=$(date +%s.%N)
[ "${REDIS:-0}" = 1 ] || serve "$our_port"
python3 - "$heir_port" "$sim_port" "${TITLES:-3000}" "$id" "$done_at_kill" "$killed_after" "$killed_at" "${REDIS:-0}" <<'PY'
import json, sys, time, urllib.request
ours, sim, n, job, done_at_kill = f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{sys.argv[2]}", int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
killed_after, killed_at, redis = float(sys.argv[6]), float(sys.argv[7]), sys.argv[8] == "1"
get = lambda url: urllib.request.urlopen(url, timeout=60).read()
start = time.monotonic()
while (view := json.loads(get(f"{ours}/jobs/{job}")))["status"] != "completed":
    assert time.monotonic() - start < 120, view
    time.sleep(0.1)
finished_after = time.time() - killed_at
lines = [json.loads(l) for l in get(f"{ours}/jobs/{job}/results").decode().splitlines()]
assert [l["index"] for l in lines] == list(range(n)), "every title once, in input order"
errors = sum(1 for l in lines if l["error"])
calls = json.loads(get(sim + "/_sim/stats"))["requests_total"]
how = "the other replica (shared redis, AOF on) finished it" if redis else "after a restart on the same data directory"
print(f"job-kill-check: SIGKILL {killed_after:.1f} s in, at {done_at_kill} of {n} done; {how} "
      f"{finished_after:.1f} s after the kill: completed, {len(lines)} lines in order, {errors} errors; "
      f"upstream calls {calls} (titles + {calls - n} redone, at most one round of 200)")
assert errors == 0 and calls <= n + 200
PY

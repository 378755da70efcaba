#!/usr/bin/env bash
# A replica SIGKILLed while it runs a job, then started again on the same data directory: the
# simulator in its own process (50 ms a call) so its count of calls spans both runs. Passes when
# the job completes with every title answered once, in input order, and the calls add up to at
# most the titles plus the calls in flight at the kill (one round: 200).
# usage: [BIN=target/release/hn-classifier] [TITLES=3000] scripts/job-kill-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_port=$(port); our_port=$(port); work=$(mktemp -d)
RUST_LOG=warn "$bin" sim --listen "127.0.0.1:$sim_port" --sim-latency-ms 50 --sim-latency-sigma 0 >/dev/null 2>&1 &
sim_pid=$!
serve() {
  HNC_DATA_DIR="$work" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$our_port" \
    --openai-base-url "http://127.0.0.1:$sim_port/v1" --openai-api-key sim-key >>"$work/serve.log" 2>&1 &
  our_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$our_port/healthz" >/dev/null && break; sleep 0.05; done
}
trap 'kill $sim_pid $our_pid 2>/dev/null || true; rm -rf "$work"' EXIT
serve
python3 - "$our_port" "$sim_port" "${TITLES:-3000}" "$work" <<'PY'
import json, os, signal, subprocess, sys, time, urllib.request
ours, sim, n, work = f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{sys.argv[2]}", int(sys.argv[3]), sys.argv[4]
titles = [l.rstrip("\n") for l in open("data/hn_titles.txt")]
job_titles = [f"{titles[i % len(titles)]} (#{i})" for i in range(n)]
def call(url, body=None):
    req = urllib.request.Request(url, json.dumps(body).encode() if body else None, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()
job = json.loads(call(ours + "/jobs", {"titles": job_titles}))
while json.loads(call(f"{ours}/jobs/{job['id']}"))["counts"]["done"] < n // 5:
    time.sleep(0.05)
time.sleep(0.12)  # into the next round: its calls are in flight at the kill
done = json.loads(call(f"{ours}/jobs/{job['id']}"))["counts"]["done"]
open(f"{work}/job", "w").write(f"{job['id']} {done}\n")
PY
read -r id done_at_kill <"$work/job"
kill -9 "$our_pid"; wait "$our_pid" 2>/dev/null || true
serve
python3 - "$our_port" "$sim_port" "${TITLES:-3000}" "$id" "$done_at_kill" <<'PY'
import json, sys, time, urllib.request
ours, sim, n, job, done_at_kill = f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{sys.argv[2]}", int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
get = lambda url: urllib.request.urlopen(url, timeout=60).read()
start = time.monotonic()
while (view := json.loads(get(f"{ours}/jobs/{job}")))["status"] != "completed":
    assert time.monotonic() - start < 120, view
    time.sleep(0.1)
lines = [json.loads(l) for l in get(f"{ours}/jobs/{job}/results").decode().splitlines()]
assert [l["index"] for l in lines] == list(range(n)), "every title once, in input order"
errors = sum(1 for l in lines if l["error"])
calls = json.loads(get(sim + "/_sim/stats"))["requests_total"]
print(f"job-kill-check: SIGKILL at {done_at_kill} of {n} done; after the restart: completed, {len(lines)} lines "
      f"in order, {errors} errors; upstream calls {calls} (titles + {calls - n} redone, at most one round of 200)")
assert errors == 0 and calls <= n + 200
PY

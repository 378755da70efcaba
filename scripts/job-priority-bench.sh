#!/usr/bin/env bash
# Interactive one-title batches while a job runs at the provider's ceiling, against an idle
# service: the simulator in its own process with an RPM limit (its x-ratelimit headers teach
# the service the ceiling), the service with a data directory; one-title batches every 200 ms
# for a while with nothing else running, then again while a job of JOB_TITLES titles runs.
# Prints each phase's p50/p95 latency, refusals (non-200) and 429s the simulator answered, and
# how far the job got.
# usage: [BIN=target/release/hn-classifier] [RPM=3000] [JOB_TITLES=5000] scripts/job-priority-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_port=$(port); our_port=$(port); work=$(mktemp -d)
RUST_LOG=warn "$bin" sim --listen "127.0.0.1:$sim_port" --sim-rpm "${RPM:-3000}" --sim-latency-ms 100 \
  --sim-latency-sigma 0.1 >/dev/null 2>&1 &
sim_pid=$!
HNC_DATA_DIR="$work" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$our_port" \
  --openai-base-url "http://127.0.0.1:$sim_port/v1" --openai-api-key sim-key >/dev/null 2>&1 &
our_pid=$!
trap 'kill $sim_pid $our_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$our_port/healthz" >/dev/null && break; sleep 0.05; done
python3 - "$our_port" "$sim_port" "${JOB_TITLES:-5000}" <<'PY'
import json, statistics, sys, time, urllib.request, urllib.error
ours, sim, n = f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{sys.argv[2]}", int(sys.argv[3])
titles = [l.rstrip("\n") for l in open("data/hn_titles.txt")]
def post(path, body):
    req = urllib.request.Request(ours + path, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)
def limited():
    return get(sim + "/_sim/stats")["faults"].get("rate_limited", 0)
def phase(name, count, offset):
    latencies, refused, item_errors = [], 0, 0
    before = limited()
    for i in range(count):
        start = time.monotonic()
        status, body = post("/classify-batch", {"titles": [f"{titles[(offset + i) % len(titles)]} #{name}{i}"]})
        latencies.append((time.monotonic() - start) * 1000)
        if status != 200:
            refused += 1
        elif body["errors"]:
            item_errors += 1
        time.sleep(max(0, 0.2 - (time.monotonic() - start)))
    latencies.sort()
    p50, p95 = statistics.median(latencies), latencies[int(len(latencies) * 0.95) - 1]
    print(f"{name}: {count} one-title batches, p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
          f"{refused} refused, {item_errors} item errors, {limited() - before} 429s at the provider")
    return p50
for i in range(10):  # warm up: the service learns the limit from the headers
    post("/classify-batch", {"titles": [f"warm {i}"]})
idle = phase("idle", 60, 0)
job_titles = [f"{titles[i % len(titles)]} (job {i})" for i in range(n)]
status, job = post("/jobs", {"titles": job_titles})
assert status == 202, status
time.sleep(3)
done_before = get(f"{ours}/jobs/{job['id']}")["counts"]["done"]
t0 = time.monotonic()
busy = phase("with the job", 60, 1000)
done_after = get(f"{ours}/jobs/{job['id']}")["counts"]["done"]
rate = (done_after - done_before) / (time.monotonic() - t0)
print(f"the job: {done_after} of {n} done, {rate:.1f} titles/s while measured; p50 ratio {busy / idle:.2f}")
PY

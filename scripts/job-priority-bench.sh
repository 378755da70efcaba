#!/usr/bin/env bash
# Interactive one-title batches while a job runs at the provider's ceiling, against an idle
# service: the simulator in its own process with an RPM limit (its x-ratelimit headers teach
# the service the ceiling), the service with a data directory; one-title batches every 200 ms
# for a while with nothing else running, then again while a job of JOB_TITLES titles runs.
# Prints each phase's p50/p95 latency, refusals (non-200) and 429s the simulator answered, and
# how far the job got. With REDIS=1, two replicas share a redis-server (budget and jobs): the job
# is submitted to the second, the interactive batches go to the first, so the priority has to
# hold across replicas through the shared budget; the Redis memory the job takes is printed too.
# usage: [BIN=target/release/hn-classifier] [RPM=3000] [JOB_TITLES=5000] [REDIS=0|1]
#        scripts/job-priority-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_port=$(port); our_port=$(port); job_port=$our_port; redis_port=$(port); work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
RUST_LOG=warn "$bin" sim --listen "127.0.0.1:$sim_port" --sim-rpm "${RPM:-3000}" --sim-latency-ms 100 \
  --sim-latency-sigma 0.1 >/dev/null 2>&1 &
pids+=($!)
keep=(HNC_DATA_DIR="$work")
if [ "${REDIS:-0}" = 1 ]; then
  scripts/ensure-deb.sh redis-server
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes --dir "$work" \
    >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  keep=(HNC_REDIS_URL="redis://127.0.0.1:$redis_port")
fi
serve() { # port
  env "${keep[@]}" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$1" \
    --openai-base-url "http://127.0.0.1:$sim_port/v1" --openai-api-key sim-key >>"$work/serve.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && break; sleep 0.05; done
}
serve "$our_port"
if [ "${REDIS:-0}" = 1 ]; then job_port=$(port); serve "$job_port"; fi
python3 - "$our_port" "$sim_port" "${JOB_TITLES:-5000}" "$job_port" "${REDIS:-0}" "$redis_port" <<'PY'
import json, statistics, subprocess, sys, time, urllib.request, urllib.error
ours, sim, n = f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{sys.argv[2]}", int(sys.argv[3])
jobs_at, redis, redis_port = f"http://127.0.0.1:{sys.argv[4]}", sys.argv[5] == "1", sys.argv[6]
def redis_memory():
    info = subprocess.run(["redis-cli", "-p", redis_port, "info", "memory"], capture_output=True, text=True).stdout
    return int(next(l.split(":")[1] for l in info.splitlines() if l.startswith("used_memory:")))
titles = [l.rstrip("\n") for l in open("data/hn_titles.txt")]
def post(path, body, base=None):
    req = urllib.request.Request((base or ours) + path, json.dumps(body).encode(), {"content-type": "application/json"})
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
memory_before = redis_memory() if redis else 0
status, job = post("/jobs", {"titles": job_titles}, jobs_at)
assert status == 202, status
if redis:
    print(f"redis: {(redis_memory() - memory_before) / n:.0f} bytes a title once submitted")
time.sleep(3)
done_before = get(f"{ours}/jobs/{job['id']}")["counts"]["done"]
t0 = time.monotonic()
busy = phase("with the job" + (" (on the other replica)" if redis else ""), 60, 1000)
done_after = get(f"{ours}/jobs/{job['id']}")["counts"]["done"]
rate = (done_after - done_before) / (time.monotonic() - t0)
print(f"the job: {done_after} of {n} done, {rate:.1f} titles/s while measured; p50 ratio {busy / idle:.2f}")
if redis:
    while get(f"{ours}/jobs/{job['id']}")["status"] == "running":
        time.sleep(1)
    print(f"redis: {(redis_memory() - memory_before) / n:.0f} bytes a title with every result written")
PY

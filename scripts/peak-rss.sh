#!/usr/bin/env bash
# Peak RSS of one `serve` process while IN_FLIGHT upstream calls (default 10,000) are in flight
# at once (target: at most 64 MiB, docs/BENCHMARKS.md). The simulator runs as its own process with a long,
# tight latency so every call is outstanding together; the titles are distinct (real titles,
# numbered on repeat) so single-flight cannot merge them, sent as batches of BATCH titles from
# as many client threads at once. The simulator is plain http://, so HTTP/2 (what `auto` picks
# against OpenAI over https) needs HNC_UPSTREAM_HTTP2=true; or TLS=1 puts a TLS front (Python,
# ALPN h2, a CA made here) before the simulator, so the default `auto` meets HTTPS as with
# OpenAI and the TLS buffers count. Needs `ulimit -n` above IN_FLIGHT.
# usage: [IN_FLIGHT=10000] [BATCH=2000] [LATENCY_MS=4000] [HNC_UPSTREAM_HTTP2=true] [TLS=1]
#        [BIN=target/release/hn-classifier] scripts/peak-rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
in_flight=${IN_FLIGHT:-10000}
latency=${LATENCY_MS:-4000}
batch=${BATCH:-2000}
[ "$(ulimit -n)" -gt $((in_flight + 100)) ] || { echo "peak-rss: ulimit -n must exceed $in_flight" >&2; exit 1; }
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_port=$(port); our_port=$(port)
RUST_LOG=warn "$bin" sim --listen "127.0.0.1:$sim_port" --sim-latency-ms "$latency" \
  --sim-latency-sigma 0.02 >/dev/null 2>&1 &
sim_pid=$!
upstream="http://127.0.0.1:$sim_port/v1"
tls_pid=
if [ "${TLS:-0}" = 1 ]; then
  dir=$(mktemp -d)
  scripts/make-ca.sh "$dir"
  tls_port=$(port)
  python3 - "$dir" "$tls_port" "$sim_port" <<'PY' &
import asyncio, ssl, sys
d, port, sim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(f"{d}/leaf.pem", f"{d}/leaf.key")
ctx.set_alpn_protocols(["h2", "http/1.1"])
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data); await w.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        w.close()
async def front(r, w):
    sr, sw = await asyncio.open_connection("127.0.0.1", sim)
    await asyncio.gather(pipe(r, sw), pipe(sr, w))
async def main():
    server = await asyncio.start_server(front, "127.0.0.1", port, ssl=ctx, backlog=4096)
    await server.serve_forever()
asyncio.run(main())
PY
  tls_pid=$!
  upstream="https://127.0.0.1:$tls_port/v1"
  export HNC_UPSTREAM_CA_FILE="$dir/ca.pem"
  sleep 0.5
fi
HNC_MAX_IN_FLIGHT=$in_flight HNC_REQUEST_CONCURRENCY=$batch HNC_MAX_BATCH=2000 \
  HNC_ADMISSION_WAIT_S=60 RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$our_port" \
  --openai-base-url "$upstream" --openai-api-key sim-key >/dev/null 2>&1 &
our_pid=$!
trap 'kill $sim_pid $our_pid $tls_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$our_port/healthz" >/dev/null && break; sleep 0.05; done
idle=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$our_pid/status")
# RSS while every call is outstanding, sampled halfway through the simulated latency.
( sleep "$(python3 -c "print($latency / 2000)")"; awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$our_pid/status" > "/tmp/peak-rss-mid.$our_pid" ) &
python3 - "http://127.0.0.1:$our_port/classify-batch" "$in_flight" "$batch" <<'PY'
import json, sys, threading, urllib.request
url, total, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lines = [l for l in open("data/hn_titles.txt", encoding="utf-8").read().splitlines() if l.strip()]
titles = [lines[i % len(lines)] + ("" if i < len(lines) else f" ({i // len(lines)})") for i in range(total)]
results = []
def post(chunk):
    body = json.dumps({"titles": chunk}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        results.append(json.load(r))
threads = [threading.Thread(target=post, args=(titles[i:i + batch],)) for i in range(0, total, batch)]
for t in threads: t.start()
for t in threads: t.join()
items = sum(r["num_items"] for r in results)
errors = sum(r["errors"] for r in results)
print(f"items={items} errors={errors}")
PY
max_in_flight=$(curl -s "http://127.0.0.1:$sim_port/_sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["max_in_flight"])')
peak=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$our_pid/status")
echo "upstream calls in flight at once (simulator's count): $max_in_flight"
echo "serve RSS idle: $idle MiB; with every call outstanding: $(cat "/tmp/peak-rss-mid.$our_pid") MiB; peak: $peak MiB"
rm -f "/tmp/peak-rss-mid.$our_pid"

#!/usr/bin/env bash
# The upstream transport against servers nobody here wrote: nginx (Debian's package) terminating
# TLS with HTTP/2 in front of the simulator, and Squid (Debian's package) as the forward proxy,
# on loopback ports with a CA made here. Each cell sends ITEMS distinct titles (default 20,000)
# in batches of 100, 20 at a time, with a 5 s idle gap (longer than nginx's keepalive_timeout of
# 3 s) before the last tenth, and checks: 0 item errors, 0 "upstream benched" log lines, and
# upstream requests (the simulator's count) at most 0.5% above the items sent.
# Cells: HTTP/2 over TLS with keepalive_requests 100 and 1000 x http2_max_concurrent_streams
# 16 and 128; the same four with HNC_UPSTREAM_HTTP2=false; Squid as HTTP_PROXY for the http://
# simulator; Squid as HTTPS_PROXY for the https:// nginx front. Then Squid asking for Basic
# credentials (a second port, basic_ncsa_auth): wrong ones fail every item at once with
# upstream_proxy_refused and a message naming the proxy settings (never Squid's HTML page), as a
# forward proxy (407 answer) and as a tunnel (407 to CONNECT); the right ones classify.
# usage: [ITEMS=20000] [BIN=target/release/hn-classifier] scripts/transport-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
items=${ITEMS:-20000}
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
scripts/ensure-deb.sh nginx
scripts/ensure-deb.sh squid
nginx=$(command -v nginx || echo /usr/sbin/nginx)
squid=$(command -v squid || echo /usr/sbin/squid)

dir=$(mktemp -d)
chmod 755 "$dir"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
  [ -f "$dir/squid.pid" ] && kill "$(cat "$dir/squid.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$dir"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

scripts/make-ca.sh "$dir"

sim_port=$(port)
RUST_LOG=warn "$bin" sim --listen "127.0.0.1:$sim_port" --sim-latency-ms 20 \
  --sim-latency-sigma 0.3 >"$dir/sim.log" 2>&1 &
pids+=($!)

# One nginx, one TLS server per (keepalive_requests, http2_max_concurrent_streams).
declare -A front
servers=""
for requests in 100 1000; do
  for streams in 16 128; do
    p=$(port)
    front[$requests-$streams]=$p
    servers+="
    server {
        listen 127.0.0.1:$p ssl http2;
        ssl_certificate $dir/leaf.pem;
        ssl_certificate_key $dir/leaf.key;
        keepalive_requests $requests;
        keepalive_timeout 3s;
        http2_max_concurrent_streams $streams;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
  done
done
cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    upstream sim {
        server 127.0.0.1:$sim_port;
        keepalive 256;
    }
    $servers
}
EOF
"$nginx" -c "$dir/nginx.conf" -e "$dir/nginx-error.log"

squid_port=$(port)
squid_auth_port=$(port)
printf 'hnc:%s\n' "$(openssl passwd -apr1 proxy-secret)" >"$dir/squid.passwd"
chmod 644 "$dir/squid.passwd"
mkdir -p "$dir/squid"
chmod 777 "$dir/squid"
ssl_ports=$(printf ' %s' "${front[@]}")
cat > "$dir/squid.conf" <<EOF
http_port 127.0.0.1:$squid_port
http_port 127.0.0.1:$squid_auth_port name=authed
pid_filename $dir/squid.pid
acl authport myportname authed
auth_param basic program /usr/lib/squid/basic_ncsa_auth $dir/squid.passwd
auth_param basic realm hn-classifier-check
acl authed proxy_auth REQUIRED
access_log stdio:$dir/squid/access.log !authport
access_log stdio:$dir/squid/auth.log authport
cache_log $dir/squid/cache.log
cache deny all
cache_mem 8 MB
shutdown_lifetime 0 seconds
coredump_dir $dir/squid
acl localhost src 127.0.0.1/32
# As every Squid ships: CONNECT only to SSL ports, here 443 and the nginx fronts.
acl SSL_ports port 443$ssl_ports
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow localhost !authport
# A denying line whose last ACL is proxy_auth answers 407 (a challenge), not 403.
http_access deny authport !authed
http_access allow authport
http_access deny all
EOF
"$squid" -f "$dir/squid.conf" -N >"$dir/squid/stdout.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$sim_port/_sim/stats" >/dev/null \
    && curl -sf --cacert "$dir/ca.pem" "https://127.0.0.1:${front[100-16]}/_sim/stats" >/dev/null \
    && curl -sf -x "http://127.0.0.1:$squid_port" "http://127.0.0.1:$sim_port/_sim/stats" >/dev/null \
    && break
  sleep 0.1
done

sim_requests() {
  curl -sf "http://127.0.0.1:$sim_port/_sim/stats" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_total"])'
}

failed=0
cell() { # NAME UPSTREAM_URL ENV...
  local name=$1 url=$2
  shift 2
  local our_port before after log="$dir/serve-$RANDOM.log"
  our_port=$(port)
  before=$(sim_requests)
  # The retry loop's lines at debug: a healthy cell has none, a failing one says why.
  env "$@" HNC_UPSTREAM_CA_FILE="$dir/ca.pem" HNC_MAX_BATCH=2000 \
    RUST_LOG=warn,hn_classifier::upstream::pool=debug HNC_LOG_FORMAT=json \
    "$bin" serve --listen "127.0.0.1:$our_port" --openai-base-url "$url/v1" \
    --openai-api-key sim-key >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$our_port/healthz" >/dev/null && break; sleep 0.05; done
  local outcome
  outcome=$(env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy \
    python3 - "http://127.0.0.1:$our_port/classify-batch" "$items" "$name" <<'PY'
import concurrent.futures, json, sys, time, urllib.request
url, total, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = [l for l in open("data/hn_titles.txt", encoding="utf-8").read().splitlines() if l.strip()]
titles = [f"{lines[i % len(lines)]} [{name} {i}]" for i in range(total)]
def post(chunk):
    req = urllib.request.Request(url, json.dumps({"titles": chunk}).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        answer = json.load(r)
    return answer["num_items"], answer["errors"], [x["error"] for x in answer["results"] if x["error"]][:1]
def run(part):
    chunks = [part[i:i + 100] for i in range(0, len(part), 100)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        return list(pool.map(post, chunks))
start = time.time()
first = total * 9 // 10
results = run(titles[:first])
time.sleep(5)  # longer than nginx's keepalive_timeout: its idle connections are closed
results += run(titles[first:])
n = sum(r[0] for r in results); errors = sum(r[1] for r in results)
sample = next((r[2][0] for r in results if r[2]), None)
print(f"{n} {errors} {time.time() - start:.1f} {json.dumps(sample)}")
PY
)
  after=$(sim_requests)
  local resent
  resent=$(curl -s "http://127.0.0.1:$our_port/metrics" | awk '/^upstream_unprocessed_resent_total/ { s += $2 } END { print s + 0 }')
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  read -r n errors secs sample <<<"$outcome"
  local benched requests=$((after - before))
  benched=$(grep -c "upstream benched" "$log" || true)
  local verdict=ok
  if [ "$n" != "$items" ] || [ "$errors" != 0 ] || [ "$benched" != 0 ] \
    || [ $((requests * 1000)) -gt $((items * 1005)) ]; then
    verdict=FAILED
    failed=1
  fi
  printf '%-44s items %6s  errors %3s  benched %3s  upstream requests %6s (+%s%%)  resent %5s  %5ss  %s\n' \
    "$name" "$n" "$errors" "$benched" "$requests" \
    "$(python3 -c "print(round(($requests - $items) * 100 / $items, 2))")" "$resent" "$secs" "$verdict"
  if [ "$verdict" != ok ]; then
    echo "  first error: $sample"
    grep -m3 -i "warn\|error" "$log" || true
    echo "  retries by error (the first 5 kinds):"
    python3 - "$log" <<'PY'
import collections, json, sys
kinds = collections.Counter()
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    try:
        log = json.loads(line)
    except ValueError:
        continue
    fields = log.get("fields", log)
    if fields.get("message") == "retrying":
        kinds[str(fields.get("error", "?"))[:160]] += 1
for kind, n in kinds.most_common(5):
    print(f"  {n:6d}  {kind}")
PY
  fi
}

echo "transport check: $items titles a cell (batches of 100, 20 at a time, 5 s idle before the last tenth)"
for http2 in auto false; do
  for requests in 100 1000; do
    for streams in 16 128; do
      cell "nginx h2=$http2 keepalive_requests=$requests streams=$streams" \
        "https://127.0.0.1:${front[$requests-$streams]}" HNC_UPSTREAM_HTTP2=$http2
    done
  done
done
cell "squid HTTP_PROXY -> http:// simulator" "http://127.0.0.1:$sim_port" \
  HTTP_PROXY="http://127.0.0.1:$squid_port" NO_PROXY=
cell "squid HTTPS_PROXY -> https:// nginx" "https://127.0.0.1:${front[100-128]}" \
  HTTPS_PROXY="http://127.0.0.1:$squid_port" NO_PROXY=
# NAME UPSTREAM_URL EXPECT(ok|refused) ENV...: a few titles through a proxy that asks for
# credentials.
auth_check() {
  local name=$1 url=$2 expect=$3
  shift 3
  local our_port log="$dir/serve-auth-$RANDOM.log"
  our_port=$(port)
  env "$@" NO_PROXY= HNC_UPSTREAM_CA_FILE="$dir/ca.pem" RUST_LOG=warn HNC_LOG_FORMAT=pretty \
    "$bin" serve --listen "127.0.0.1:$our_port" --openai-base-url "$url/v1" \
    --openai-api-key sim-key >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$our_port/healthz" >/dev/null && break; sleep 0.05; done
  local verdict
  verdict=$(python3 - "http://127.0.0.1:$our_port/classify-batch" "$expect" <<'PY'
import json, sys, time, urllib.request
url, expect = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, json.dumps({"titles": ["Rust 2.0", "A new GPU", "Ask HN: proxies"]}).encode(),
                             {"content-type": "application/json"})
start = time.time()
with urllib.request.urlopen(req, timeout=120) as r:
    answer = json.load(r)
took = time.time() - start
results = answer["results"]
if expect == "ok":
    good = answer["errors"] == 0
else:
    good = all(x["error_code"] == "upstream_proxy_refused" and "HTTPS_PROXY" in x["error"]
               and "<" not in x["error"] for x in results) and took < 10
print("ok" if good else "FAILED " + json.dumps(results[0]))
PY
)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  printf '%-44s %s\n' "$name" "$verdict"
  [ "$verdict" = ok ] || failed=1
}
auth_check "squid 407 HTTP_PROXY, wrong password" "http://127.0.0.1:$sim_port" refused \
  HTTP_PROXY="http://hnc:wrong@127.0.0.1:$squid_auth_port"
auth_check "squid 407 HTTPS_PROXY (CONNECT), no password" "https://127.0.0.1:${front[100-128]}" refused \
  HTTPS_PROXY="http://127.0.0.1:$squid_auth_port"
auth_check "squid HTTPS_PROXY with credentials" "https://127.0.0.1:${front[100-128]}" ok \
  HTTPS_PROXY="http://hnc:proxy-secret@127.0.0.1:$squid_auth_port"
auth_check "squid HTTP_PROXY with credentials" "http://127.0.0.1:$sim_port" ok \
  HTTP_PROXY="http://hnc:proxy-secret@127.0.0.1:$squid_auth_port"
denied=$(grep -c "TCP_DENIED" "$dir/squid/access.log" || true)
echo "squid: $(grep -c "" "$dir/squid/access.log" || true) requests logged, $denied denied"
[ "$denied" = 0 ] || failed=1
[ "$failed" = 0 ] && echo "transport check: ok" || { echo "transport check: FAILED"; exit 1; }

#!/usr/bin/env bash
# Packing benchmark (docs/BENCHMARKS.md). For each pack size: a fresh simulator at 30,000 RPM (300 ms median) and a fresh service; N items
# as batches of 2000 (500 at k=1, so enough calls are in flight to reach the ceiling) at once; items/s, upstream requests and tokens per item.
B=target/release/hn-classifier
for spec in "1 5000" "5 30000" "10 60000" "20 100000" "50 100000"; do
  set -- $spec; k=$1; n=$2
  $B sim --listen 127.0.0.1:9100 --sim-rpm 30000 --sim-latency-ms 300 --sim-latency-sigma 0.5 > /tmp/sim.log 2>&1 &
  sim=$!
  OPENAI_API_KEY=sk-bench OPENAI_BASE_URL=http://127.0.0.1:9100/v1 HNC_LISTEN=127.0.0.1:8140 HNC_PACK_SIZE=$k RUST_LOG=warn $B serve > /tmp/serve.log 2>&1 &
  srv=$!
  sleep 0.5
  size=$(( k == 1 ? 500 : 2000 ))
  out=$(BATCHES=$((n / size)) SIZE=$size SIM_URL=http://127.0.0.1:9100 scripts/load.sh http://127.0.0.1:8140)
  tokens=$(curl -s 127.0.0.1:8140/metrics | awk '/^upstream_tokens_total\{kind="(input|output)"/ {s += $2} END {print s}')
  reqs=$(curl -s 127.0.0.1:8140/metrics | awk '/^upstream_requests_total/ {s += $2} END {print s}')
  echo "k=$k items=$n upstream_requests=$reqs tokens=$tokens | $out" | tr '\n' ' '; echo
  kill $srv $sim; wait $srv $sim 2>/dev/null
done

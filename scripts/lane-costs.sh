#!/usr/bin/env bash
# Tokens and cost per 1,000 titles on the simulator (o200k_base counts, gpt-4.1-mini list
# prices), for each confidence source and pack size, live and through the Batch API lane; with
# EXAMPLES=N, the first N gold items as HNC_EXAMPLES_FILE too.
# usage: [BIN=target/release/hn-classifier] [TITLES=data/hn_titles_1000.txt] [SIZES="1 5 20"]
#        [EXAMPLES=0] scripts/lane-costs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/hn-classifier}
titles=${TITLES:-data/hn_titles_1000.txt}
sizes=${SIZES:-1 5 20}
[ -x "$bin" ] || cargo build --locked --release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export HNC_SIM_LATENCY_MS=0 RUST_LOG=warn
if [ "${EXAMPLES:-0}" -gt 0 ]; then
  head -n "$EXAMPLES" data/hn_gold_300.jsonl >"$dir/examples.jsonl"
  export HNC_EXAMPLES_FILE="$dir/examples.jsonl"
fi
for confidence in self logprobs; do
  for k in $sizes; do
    for lane in live batch; do
      args=(--simulate --output "$dir/out-$confidence-$k-$lane.jsonl")
      [ "$lane" = batch ] && args+=(--batch-api --poll-s 1)
      line=$(HNC_CONFIDENCE=$confidence HNC_PACK_SIZE=$k "$bin" classify "$titles" "${args[@]}" 2>&1 | grep 'per 1000 items')
      echo "confidence=$confidence k=$k lane=$lane ${line#*per 1000 items: }"
    done
  done
done

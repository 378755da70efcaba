#!/usr/bin/env bash
# The deadline planner against the simulator (RPM 6000 announced, a batch takes SIM_BATCH_S):
# the same TITLES titles submitted as jobs due in 30 h, 3 h and 80 s, and one whose batch the
# simulator holds past what the deadline allows (escalated). For each: the lane chosen, the
# plan's estimate against what was spent, the cost against the same calls live, and the time.
# usage: [BIN=target/release/hn-classifier] [TITLES=1000] [SIM_BATCH_S=2] scripts/lanes-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
serve() { # port, sim batch seconds, extra env
  local p=$1 held=$2; shift 2
  env HNC_DATA_DIR="$work/$p" HNC_BATCH_POLL_S=0.5 HNC_RPM_LIMIT=6000 "$@" RUST_LOG=warn \
    "$bin" serve --simulate --sim-rpm 6000 --sim-batch-seconds "$held" --listen "127.0.0.1:$p" \
    >>"$work/serve.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.05; done
}
plain=$(port); held=$(port)
serve "$plain" "${SIM_BATCH_S:-2}"
# The planner expects a batch in 5 s; the simulator takes 120 s over this one.
serve "$held" 120 HNC_BATCH_WINDOW_S=5 HNC_DEADLINE_MARGIN_S=5
python3 - "$plain" "$held" "${TITLES:-1000}" <<'PY'
import json, sys, time, urllib.request
plain, held, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
titles = [l.rstrip("\n") for l in open("data/hn_titles.txt")]
job_titles = [f"{titles[i % len(titles)]} (#{i})" for i in range(n)]
def call(port, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode() if body else None,
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)
for port, within in [(plain, "30h"), (plain, "3h"), (plain, "80s"), (held, "60s")]:
    start = time.monotonic()
    job = call(port, "/jobs", {"titles": job_titles, "complete_within": within})
    while (view := call(port, f"/jobs/{job['id']}"))["status"] in ("queued", "running"):
        time.sleep(0.2)
    took = time.monotonic() - start
    plan, usage = view["plan"], view["usage"]
    lanes = ", ".join(f"{lane} {u['titles']} titles ${u['cost_usd']:.4f} (live ${u['live_cost_usd']:.4f})"
                      for lane, u in sorted(view["lanes"].items()))
    spent = usage["cost_usd"]
    live = sum(u["live_cost_usd"] for u in view["lanes"].values())
    print(f"due in {within:>4}: plan {plan['lane']:<5} est ${plan['estimated_cost_usd']:.4f} "
          f"({plan['estimated_input_tokens']} in, spent {usage['input_tokens']}); {view['status']} in {took:.1f} s; "
          f"{lanes}; spent ${spent:.4f} = {spent / live:.2f}x live")
PY

#!/usr/bin/env bash
# Job webhooks against a verifier nobody here wrote: the `standardwebhooks` package from PyPI
# (the Standard Webhooks project's own library), in a cached virtualenv. A receiver built on it
# answers 503 to the first delivery (down for a while), then verifies every later one with
# `Webhook(secret).verify(body, headers)`, and checks that a tampered copy of the same delivery
# is rejected. `serve --simulate` keeps a job on disk with a callback to it; the check passes
# when the receiver has verified the job's event and rejected the tampered one.
# usage: [BIN=target/release/hn-classifier] scripts/webhook-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "webhook-check: $*" >&2; exit 1; }
bin=${BIN:-target/release/hn-classifier}
[ -x "$bin" ] || cargo build --locked --release
venv="${XDG_CACHE_HOME:-$HOME/.cache}/hn-classifier/webhooks-venv-1.3.0"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check standardwebhooks==1.3.0
fi
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hook_port=$(port); our_port=$(port)
work=$(mktemp -d)
secret="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
"$venv/bin/python" - "$hook_port" "$secret" "$work" <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
port, secret, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
hook = Webhook(secret)
calls = 0
class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        global calls
        calls += 1
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if calls == 1:
            self.send_response(503); self.end_headers(); return
        try:
            event = hook.verify(body, headers)
        except WebhookVerificationError as e:
            open(f"{work}/refused", "a").write(f"{e}\n")
            self.send_response(400); self.end_headers(); return
        tampered = body.replace(b'"done":', b'"done":1')
        try:
            hook.verify(tampered, headers)
            open(f"{work}/tamper-accepted", "w").write("a tampered body passed\n")
        except WebhookVerificationError:
            open(f"{work}/tamper-refused", "w").write("ok\n")
        json.dump({"id": headers["webhook-id"], "event": event}, open(f"{work}/verified", "w"))
        self.send_response(204); self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
PY
hook_pid=$!
HNC_DATA_DIR="$work/data" HNC_WEBHOOK_SECRET="$secret" HNC_WEBHOOK_ALLOW_PRIVATE=true \
  RUST_LOG=warn "$bin" serve --simulate --sim-latency-ms 0 --listen "127.0.0.1:$our_port" >"$work/serve.log" 2>&1 &
our_pid=$!
trap 'kill $hook_pid $our_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$our_port/healthz" >/dev/null && break; sleep 0.05; done
titles=$(head -100 data/hn_titles.txt | python3 -c 'import json, sys; print(json.dumps([l.rstrip("\n") for l in sys.stdin]))')
job=$(curl -sf "http://127.0.0.1:$our_port/jobs" -H 'content-type: application/json' \
  -d "{\"titles\": $titles, \"callback_url\": \"http://127.0.0.1:$hook_port/hook\"}") \
  || die "the job was not accepted"
id=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$job")
for _ in $(seq 300); do [ -f "$work/verified" ] && break; sleep 0.1; done
[ -f "$work/verified" ] || { cat "$work/serve.log" >&2; cat "$work/refused" >&2 2>/dev/null || true; die "no delivery verified within 30 s"; }
[ ! -f "$work/refused" ] || die "the verifier refused a delivery: $(cat "$work/refused")"
[ -f "$work/tamper-refused" ] || die "a tampered delivery was not refused"
python3 - "$work/verified" "$id" <<'PY'
import json, sys
got = json.load(open(sys.argv[1]))
event, job = got["event"], sys.argv[2]
assert event["type"] == "job.completed", event["type"]
assert event["data"]["id"] == job, (event["data"]["id"], job)
assert event["data"]["counts"] == {"total": 100, "done": 100, "errors": 0, "pending": 0}, event["data"]["counts"]
print(f"webhook-check: {got['id']} verified by standardwebhooks after one 503, a tampered copy refused; job {job} completed, 100 of 100")
PY

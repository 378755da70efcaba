#!/usr/bin/env bash
# /docs works offline: headless Chromium (Debian's package, installed when missing) loads the page
# from `serve --simulate` with every host but 127.0.0.1 unreachable, and the API's operations
# must render from the viewer compiled into the binary. Keeps a screenshot in docs/docs-page.png
# with SCREENSHOT=1.
# usage: [B=target/release/hn-classifier] [SCREENSHOT=1] scripts/docs-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${B:-target/release/hn-classifier}
scripts/ensure-deb.sh chromium
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
HNC_LISTEN="127.0.0.1:$port" RUST_LOG=warn "$bin" serve --simulate >"$dir/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

# Every name but 127.0.0.1 resolves to nothing: a CDN, a font host or a proxy would fail.
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$dir/profile" --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
  --window-size=1280,900 --virtual-time-budget=15000)
"${chrome[@]}" --dump-dom "http://127.0.0.1:$port/docs" >"$dir/dom.html" 2>"$dir/chromium.log"
for expected in "/classify-batch" "/taxonomies" "Classify a batch of titles"; do
  if ! grep -q "$expected" "$dir/dom.html"; then
    echo "the docs page did not render the operation $expected offline" >&2
    exit 1
  fi
done
# Buttons that need Scalar's cloud must not be offered on a page presented as offline.
for absent in "Ask AI" "Generate MCP" "Deploy" "Developer Tools"; do
  if grep -q "$absent" "$dir/dom.html"; then
    echo "the docs page offers \"$absent\", which needs Scalar's cloud" >&2
    exit 1
  fi
done
if [ "${SCREENSHOT:-0}" = 1 ]; then
  "${chrome[@]}" --screenshot="$PWD/docs/docs-page.png" "http://127.0.0.1:$port/docs" 2>>"$dir/chromium.log"
fi
echo "docs page: the operations render offline ($(wc -c <"$dir/dom.html") bytes of DOM)"

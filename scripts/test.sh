#!/usr/bin/env bash
# The whole test suite: what the README's set-up runs and what CI runs. The shared-Redis tests
# start their own redis-server (Debian's package) on a free loopback port: installed here when
# missing (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deb.sh redis-server
exec cargo test --locked "$@"

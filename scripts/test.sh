#!/usr/bin/env bash
# The whole test suite: what the README's set-up runs and what CI runs. The shared-Redis tests
# start their own redis-server (Debian's package) on a free loopback port: installed here when
# missing (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
  echo "installing redis-server (Debian's package) for the shared-Redis tests"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # The package starts a system service; the tests run their own servers.
  ($sudo systemctl stop redis-server 2>/dev/null || $sudo service redis-server stop 2>/dev/null) || true
fi
exec cargo test --locked "$@"

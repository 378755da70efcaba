#!/usr/bin/env bash
# Installs Debian's PACKAGE when COMMAND (default: PACKAGE) is not on PATH, as root or through
# sudo, and stops the system service the package may start (the checks run their own).
# usage: scripts/ensure-deb.sh PACKAGE [COMMAND]
set -euo pipefail
package=$1
command=${2:-$1}
command -v "$command" >/dev/null && exit 0
echo "installing $package (Debian's package)"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get -o DPkg::Lock::Timeout=300 update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$package" >/dev/null
($sudo systemctl stop "$package" 2>/dev/null || $sudo service "$package" stop 2>/dev/null) || true

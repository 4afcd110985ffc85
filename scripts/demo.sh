#!/usr/bin/env bash
# The main job on the bundled default model: set up, convert SmolLM2-135M-Instruct to an int4 GGUF
# in one call, and answer a prompt with the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/python samples/quickstart.py "$@"

#!/usr/bin/env bash
# Prints the path of llama.cpp's own convert_hf_to_gguf.py tree, taken from the sdist of the
# installed llama-cpp-python (same llama.cpp version), fetched once into .cache/. Tests and bench
# run it as the reference; edgekit never imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(.venv/bin/python -c "from importlib.metadata import version; print(version('llama-cpp-python'))")
dest=.cache/reference/llama.cpp-$version
if [[ ! -f $dest/convert_hf_to_gguf.py ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp" >&2
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp" --wildcards \
    '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest.partial" && mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$dest.partial" && mv "$dest.partial" "$dest"
fi
realpath "$dest"

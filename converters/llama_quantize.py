"""llama.cpp's own quantizer (k-quants and friends), through llama-cpp-python's C API."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import ConversionError, require


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """llama.cpp logs every tensor to fd 2; keep it out of the user's terminal, keep it for errors."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines.extend(log.read().decode("utf-8", "replace").splitlines())


def quantize(src: Path, dst: Path, file_type: int, threads: int | None = None) -> None:
    """Quantize the GGUF `src` into `dst` with llama.cpp's llama_model_quantize."""
    llama_cpp = require("llama_cpp", "llama-cpp-python", "llama", "Quantizing to llama.cpp's k-quant types")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = threads or os.cpu_count() or 1
    with _captured_stderr() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        tail = " | ".join(log[-3:])
        raise ConversionError(f"{src}: llama.cpp's quantizer failed with code {rc}: {tail}")

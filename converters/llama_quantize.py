"""llama.cpp's own quantizer (k-quants and friends), through llama-cpp-python's C API.

llama_model_quantize is one long native call: Python cannot deliver Ctrl-C or SIGTERM until it
returns, and an assertion inside it aborts the process. So it runs in a child process (this
module as __main__): the parent waits in short steps, kills the child on an interrupt, and turns
a crash into a ConversionError with the tail of llama.cpp's log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit import children
from edgekit.errors import ConversionError, require


def quantize(src: Path, dst: Path, file_type: int, threads: int | None = None) -> None:
    """Quantize the GGUF `src` into `dst` with llama.cpp's llama_model_quantize (in a child process)."""
    require("llama_cpp", "llama-cpp-python", "llama", "Quantizing to llama.cpp's k-quant types")
    args = [str(src), str(dst), str(int(file_type)), str(threads or os.cpu_count() or 1)]
    # llama.cpp logs every tensor to stderr: keep it out of the terminal, keep it for errors
    with tempfile.TemporaryFile(mode="w+b") as log:
        child = None
        try:
            # this thread waits for the child, so Linux may kill it when the thread ends (pdeathsig)
            child = children.start("edgekit.converters.llama_quantize", args, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, pdeathsig=True)
            while True:
                try:
                    rc = child.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:  # Ctrl-C, SIGTERM (raised by the caller's handler): stop llama.cpp now
            if child is not None:
                children.stop(child)
            Path(dst).unlink(missing_ok=True)
            raise
        if rc != 0:
            Path(dst).unlink(missing_ok=True)
            log.seek(0)
            lines = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            tail = " | ".join(lines[-3:]) or "no message"
            how = f"was {children.exit_words(rc)}" if rc < 0 else f"failed with code {rc}"
            raise ConversionError(f"{src}: llama.cpp's quantizer {how}: {tail}")


def _child(src: str, dst: str, file_type: int, threads: int) -> int:
    children.guard()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params))


if __name__ == "__main__":
    code = _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    if code != 0:
        print(f"llama_model_quantize returned {code}", file=sys.stderr)
    sys.exit(1 if code else 0)

"""llama.cpp's own quantizer (k-quants and friends), through llama-cpp-python's C API.

llama_model_quantize is one long native call: Python cannot deliver Ctrl-C or SIGTERM until it
returns, and an assertion inside it aborts the process. So it runs in a child process (this
module as __main__): the parent waits in short steps, kills the child on an interrupt, and turns
a crash into a ConversionError with the tail of llama.cpp's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.errors import ConversionError, require
from edgekit.signals import deferred_signals, die_with_parent


def quantize(src: Path, dst: Path, file_type: int, threads: int | None = None) -> None:
    """Quantize the GGUF `src` into `dst` with llama.cpp's llama_model_quantize (in a child process)."""
    require("llama_cpp", "llama-cpp-python", "llama", "Quantizing to llama.cpp's k-quant types")
    args = [sys.executable, "-m", "edgekit.converters.llama_quantize", str(src), str(dst),
            str(int(file_type)), str(threads or os.cpu_count() or 1), str(os.getpid())]
    # llama.cpp logs every tensor to stderr: keep it out of the terminal, keep it for errors
    with tempfile.TemporaryFile(mode="w+b") as log:
        child = None
        try:
            # a signal inside Popen would orphan the child: it waits until it is ours
            with deferred_signals():
                child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            while True:
                try:
                    rc = child.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:  # Ctrl-C, SIGTERM (raised by the caller's handler): stop llama.cpp now
            if child is not None:
                child.kill()
                child.wait()
            Path(dst).unlink(missing_ok=True)
            raise
        if rc != 0:
            Path(dst).unlink(missing_ok=True)
            log.seek(0)
            lines = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            tail = " | ".join(lines[-3:]) or "no message"
            how = f"was killed by {signal.Signals(-rc).name}" \
                if rc < 0 and -rc in signal.Signals._value2member_map_ else f"failed with code {rc}"
            raise ConversionError(f"{src}: llama.cpp's quantizer {how}: {tail}")


def _child(src: str, dst: str, file_type: int, threads: int, parent: int) -> int:
    die_with_parent(parent)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params))


if __name__ == "__main__":
    code = _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    if code != 0:
        print(f"llama_model_quantize returned {code}", file=sys.stderr)
    sys.exit(1 if code else 0)

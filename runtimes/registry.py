"""Which backend runs an artifact. Each backend declares, as class attributes, the formats and
tasks it serves and the devices it knows; load() and devices() read only these declarations.

A new backend (MLX, onnxruntime-genai ...) is one module with a Backend subclass and one line here.
"""

from __future__ import annotations

import importlib

from edgekit.errors import ArtifactError

from .base import Backend

# "module:class", in order of preference when two serve the same format and task
BACKENDS = (
    "edgekit.runtimes.llamacpp:LlamaCppBackend",
    "edgekit.runtimes.onnxrt:OnnxRuntimeBackend",
    "edgekit.runtimes.onnxrt:OnnxEncoderBackend",
)


def backends() -> list[type[Backend]]:
    """The registered backend classes (importing a backend module loads no native library)."""
    out = []
    for entry in BACKENDS:
        module, name = entry.split(":")
        out.append(getattr(importlib.import_module(module), name))
    return out


def backend_for(fmt: str, task: str, where: str) -> type[Backend]:
    """The backend serving `fmt` artifacts of `task`, or an ArtifactError naming what exists."""
    for cls in backends():
        if fmt in cls.formats and task in cls.tasks:
            return cls
    served = sorted({f"{f}/{t}" for cls in backends() for f in cls.formats for t in cls.tasks})
    raise ArtifactError(f"{where}: no runtime serves format '{fmt}' with task '{task}' "
                        f"(served: {', '.join(served)})")


def reader_for(fmt: str) -> type[Backend] | None:
    """The backend whose file checks (runtime_files, preflight) apply to `fmt` artifacts, or None for a
    format no runtime reads (its manifest can still be read and its hashes checked)."""
    return next((cls for cls in backends() if fmt in cls.formats), None)

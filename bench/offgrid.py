"""SmolLM2 with its weights moved off the Q4_1 grid, for judging quantizers fairly (docs/measurements.md).

The bundled SmolLM2 is dequantized from Q4_1: every 32-value block of every matrix sits on a
16-level grid, which flatters any quantizer that can land on that grid. Here each value gets a
uniform nudge in (-step/2, +step/2), step = (max - min) / 15 of its block, so no block stays on a
grid; the model still writes coherent text. Deterministic (seed 0), cached next to the bundle.

    python bench/offgrid.py        # prints the checkpoint path
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def offgrid_checkpoint(seed: int = 0) -> Path:
    from safetensors.numpy import load_file, save_file

    from edgekit import bundled
    from edgekit.cache import cache_dir

    src = bundled.path("smollm2-135m-instruct")
    dest = cache_dir("bench") / f"smollm2-offgrid-s{seed}"
    if (dest / "model.safetensors").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    rng = np.random.default_rng(seed)
    tensors = load_file(str(src / "model.safetensors"))
    for name, w in tensors.items():
        if w.ndim != 2 or w.shape[1] % 32:
            continue
        blocks = w.reshape(w.shape[0], -1, 32)
        step = (blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True)) / 15
        nudge = rng.uniform(-0.5, 0.5, size=blocks.shape).astype(np.float32) * step
        tensors[name] = (blocks + nudge).reshape(w.shape).astype(np.float32)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "OFFGRID.json").write_text(json.dumps({"seed": seed, "from": str(src)}))
    tmp.rename(dest)
    return dest


if __name__ == "__main__":
    print(offgrid_checkpoint())

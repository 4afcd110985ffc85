"""verify(): grade an artifact against the checkpoint it was converted from (fidelity.py measures)."""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.artifact import read_manifest
from edgekit.conversion.pipeline import edgekit_reference
from edgekit.progress import Progress
from edgekit.quality.fidelity import FidelityReport, check, find_source, record, thresholds_for


def verify(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
           reference_kind: str = "auto", eval_file: str | os.PathLike[str] | None = None,
           max_kl: float | None = None, min_top1: float | None = None, min_cosine: float | None = None,
           device: str = "cpu", threads: int | None = None, save: bool = True,
           progress: Progress | None = None) -> FidelityReport:
    """Measure what an artifact lost against its source checkpoint and grade it (see the module doc).

    reference: the source checkpoint (directory or hub id); default: the one edgekit.json names.
    reference_kind: "auto" (transformers when installed, else edgekit's own fp32 build),
    "transformers" or "edgekit". eval_file: grade on your own text instead of edgekit's.
    max_kl / min_top1 / min_cosine override the gate of the artifact's quantization level.
    save: record the report in the artifact's edgekit.json (`edgekit info` shows it).
    """
    path = Path(artifact)
    manifest = read_manifest(path)
    label = str((manifest.get("quantization") or {}).get("label") or "int4")
    limits = thresholds_for(label, max_kl, min_top1, min_cosine)
    ckpt = find_source(manifest, path, reference)
    report = check(path, manifest, ckpt, reference_kind=reference_kind, eval_file=eval_file,
                   thresholds=limits, device=device, threads=threads, progress=progress,
                   build_reference=edgekit_reference)
    if save:
        record(path, report)
    return report

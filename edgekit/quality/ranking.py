"""Artifacts ranked by what their conversion lost: the verify report's figures where there is one,
else the precision's expected loss. load()'s choice among variants and profile's verdict use it."""

from __future__ import annotations

from typing import Any

# Expected mean KL per precision, for artifacts without a verify report (SmolLM2-135M's measured
# figures, docs/measurements.md): the order they put variants in is what matters.
EXPECTED_KL = {"fp32": 0.0, "fp16": 1e-4, "bf16": 1e-3, "int8": 0.006, "int6": 0.02, "int5": 0.04,
               "int4": 0.09, "int3": 0.3, "int2": 1.0}


def faithfulness(manifest: dict[str, Any]) -> tuple[int, float, str]:
    """Sort key, most faithful first: a failed verify report last; then the measured mean KL (or
    1 - cosine for embedders), else the precision's expected KL."""
    report = manifest.get("fidelity") or {}
    metrics = report.get("metrics") or {}
    if report and report.get("passed") is False:
        return (1, float("inf"), "failed its verify gate")
    if "kl_mean" in metrics:
        return (0, float(metrics["kl_mean"]), f"measured mean KL {metrics['kl_mean']:.4f}")
    if "cosine_mean" in metrics:
        return (0, 1 - float(metrics["cosine_mean"]), f"measured cosine {metrics['cosine_mean']:.4f}")
    label = str((manifest.get("quantization") or {}).get("label"))
    expected = EXPECTED_KL.get(label, 0.5)
    return (0, expected, f"not verified; {label} ranks by precision")

"""What this machine can run on, as each backend itself reports it (nothing assumed), and the one
policy for device="auto" that edgekit.load follows."""

from __future__ import annotations

import platform
import sys
from typing import Any

from .errors import EdgekitError


def apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def llama_cpp_auto() -> tuple[str, str]:
    """(device, why) for llama.cpp: it offloads to Metal on Apple Silicon, to CUDA elsewhere."""
    from edgekit.runtimes import llamacpp

    if llamacpp.gpu_offload_supported():
        return ("apple" if apple_silicon() else "cuda"), "GPU offload compiled in"
    return "cpu", "this build has no GPU offload"


def onnxruntime_auto() -> tuple[str, str]:
    """(device, why) for ONNX Runtime: CUDA when its provider loads; CoreML lacks the fused decoder ops."""
    from edgekit.runtimes import onnxrt

    if onnxrt.PROVIDERS["cuda"] in onnxrt.available_providers():
        return "cuda", "CUDAExecutionProvider available"
    return "cpu", "no CUDA provider (CoreML lacks the fused decoder ops, so auto never picks it)"


def devices() -> dict[str, Any]:
    """Per backend: the devices it can use here, and the best pick for device='auto'."""
    report: dict[str, Any] = {"platform": f"{sys.platform}-{platform.machine()}", "apple_silicon": apple_silicon()}
    try:
        auto, why = llama_cpp_auto()
        report["llama.cpp"] = {"devices": ["cpu"] if auto == "cpu" else ["cpu", auto], "auto": auto, "why": why}
    except EdgekitError as exc:  # a missing extra is reported, not raised
        report["llama.cpp"] = {"devices": [], "why": str(exc)}
    try:
        from edgekit.runtimes.onnxrt import PROVIDERS, available_providers

        providers = available_providers()
        auto, why = onnxruntime_auto()
        report["onnxruntime"] = {"devices": [d for d, p in PROVIDERS.items() if p in providers],
                                 "providers": providers, "auto": auto, "why": why}
    except EdgekitError as exc:
        report["onnxruntime"] = {"devices": [], "why": str(exc)}
    return report

"""What this machine can run on, as each backend itself reports it (nothing assumed)."""

from __future__ import annotations

import platform
import sys
from typing import Any

from .errors import EdgekitError


def devices() -> dict[str, Any]:
    """Per backend: the devices it can use here, and the best pick for device='auto'."""
    apple_silicon = sys.platform == "darwin" and platform.machine() == "arm64"
    report: dict[str, Any] = {"platform": f"{sys.platform}-{platform.machine()}", "apple_silicon": apple_silicon}
    try:
        from edgekit.runtimes.llamacpp import gpu_offload_supported

        gpu = gpu_offload_supported()
        gpu_name = "apple" if apple_silicon else "cuda"
        report["llama.cpp"] = {"devices": ["cpu", gpu_name] if gpu else ["cpu"], "auto": gpu_name if gpu else "cpu",
                               "why": "GPU offload compiled in" if gpu else "this build has no GPU offload"}
    except EdgekitError as exc:  # a missing extra is reported, not raised
        report["llama.cpp"] = {"devices": [], "why": str(exc)}
    try:
        from edgekit.runtimes.onnxrt import PROVIDERS, available_providers

        providers = available_providers()
        usable = [d for d, p in PROVIDERS.items() if p in providers]
        report["onnxruntime"] = {"devices": usable, "providers": providers,
                                 "auto": "cuda" if "cuda" in usable else "cpu",
                                 "why": "CUDAExecutionProvider available" if "cuda" in usable
                                 else "no CUDA provider (CoreML lacks the fused decoder ops, so auto never picks it)"}
    except EdgekitError as exc:
        report["onnxruntime"] = {"devices": [], "why": str(exc)}
    return report

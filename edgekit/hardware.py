"""What this machine can run on, as each registered backend itself reports it (nothing assumed).

A module name other than the function's: `edgekit.devices` stays the function once this loads.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from edgekit.errors import EdgekitError


def apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def devices() -> dict[str, Any]:
    """Per backend: the devices it can use here, and the best pick for device='auto'."""
    from edgekit.runtimes.registry import backends

    report: dict[str, Any] = {"platform": f"{sys.platform}-{platform.machine()}",
                              "apple_silicon": apple_silicon()}
    for cls in backends():
        if cls.name in report:  # several classes of one engine (ONNX decoder and encoder) report once
            continue
        try:
            report[cls.name] = cls.device_report()
        except EdgekitError as exc:  # a missing extra is reported, not raised
            report[cls.name] = {"devices": [], "why": str(exc)}
    return report

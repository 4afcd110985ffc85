"""Third-party libraries' notices kept off the user's terminal: edgekit's own lines only.

torch, transformers, optimum and huggingface_hub print progress bars, deprecation notices and
tracer warnings that say nothing about the user's model. Code that calls them runs inside
quiet_third_party(); errors still raise, and edgekit's own warnings (FidelityWarning,
LatencyBudgetWarning) are issued outside these blocks.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

LOGGERS = ("transformers", "optimum", "torch", "torch.onnx", "huggingface_hub", "onnxruntime", "gguf")


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [log.level for log in loggers]
    bars = []  # (disable, enable) of the progress bars of libraries already imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            bars.append((hf_logging.disable_progress_bar, hf_logging.enable_progress_bar))
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        if not are_progress_bars_disabled():
            bars.append((disable_progress_bars, enable_progress_bars))
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        for disable, _ in bars:
            disable()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        for _, enable in bars:
            enable()

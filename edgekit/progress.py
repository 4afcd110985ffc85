"""The one progress callback edgekit takes: progress(stage, done, total).

stage names what runs now ("gguf/write", "verify", "map 3", "model.gguf on cpu"); done of total
steps of it are finished. A callback may be called with done == 0 again when a stage starts over.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """A Progress that does nothing."""

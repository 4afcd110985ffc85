"""Ctrl-C and SIGTERM during long work: one place for how edgekit treats them.

- `signals_as_interrupt`: SIGTERM unwinds like Ctrl-C (an `Interrupted` carrying the signal), so
  every `finally` runs and half-written output is removed.
- `deferred_signals`: for a few steps that must not be cut in half (starting a child process that
  would otherwise be orphaned, the final renames of an artifact), SIGINT/SIGTERM are recorded and
  raised right after. A signal mask cannot do this: any thread may take a process's signal.

Both act in the main thread only (Python runs signal handlers there); elsewhere they do nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from edgekit.errors import Interrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    if not _main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the block; a signal that came meanwhile is raised when it ends."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])  # now the usual handler acts on it


def die_with_parent(parent_pid: int, pdeathsig: bool = True) -> None:
    """In a child process edgekit started: end when that parent ends, even by SIGKILL.

    Linux's PR_SET_PDEATHSIG does it in the kernel (pdeathsig=False when the parent started us from
    a thread other than its main one: the signal follows the thread's end, not the process's); a
    watcher thread covers the rest (macOS, that case, and a parent gone before prctl took effect).
    """
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.name != "posix" or not parent_pid:
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()

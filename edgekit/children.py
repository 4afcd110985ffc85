"""Child processes edgekit starts: `python -m MODULE ARGS`, spoken to with one JSON object a line.

Three children use it: the chat template renderer, the profiler's variants and llama.cpp's
quantizer (which only needs start(), stop() and exit_words()).

Parent side: start() runs the module so that it dies with its parent (the child calls guard()),
without a signal in between orphaning it; Child adds send() and receive() of JSON lines, a timeout
on each answer (selectors), the exit status of a child that ended, and close(). Child side:
guard(), send() and commands().
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from edgekit.signals import deferred_signals, die_with_parent

_PARENT_PID = "EDGEKIT_PARENT_PID"  # the parent's pid, for the child's guard()
_PDEATHSIG = "EDGEKIT_PDEATHSIG"  # "1": the child may ask Linux for SIGKILL when its parent ends


class ChildTimeout(Exception):
    """No whole answer came within the time given."""


class ChildExited(Exception):
    """The child closed its output (it ended, or is ending) before a whole answer came."""

    def __init__(self, code: int | None) -> None:
        super().__init__(exit_words(code))
        self.code = code


# ---- the parent's side ----------------------------------------------------------------------------
def start(module: str, args: Sequence[str] = (), *, stdin: Any = subprocess.PIPE,
          stdout: Any = subprocess.PIPE, stderr: Any = subprocess.DEVNULL,
          pdeathsig: bool | None = None) -> subprocess.Popen:
    """Start `python -m module *args` (binary pipes), set to die with this process.

    pdeathsig: whether the child may use Linux's PR_SET_PDEATHSIG, which fires when the *thread*
    that started it ends. None: only when started from the main thread, which lives as long as the
    process; True where the starting thread outlives the child (it waits for it). Either way the
    child also watches its parent's pid. SIGINT/SIGTERM arriving while it starts are raised once
    the child exists, and it is killed then: never an orphan. OSError when it cannot start.
    """
    if pdeathsig is None:
        pdeathsig = threading.current_thread() is threading.main_thread()
    env = {**os.environ, _PARENT_PID: str(os.getpid()), _PDEATHSIG: "1" if pdeathsig else "0"}
    proc = None
    try:
        with deferred_signals():
            proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=stdin, stdout=stdout,
                                    stderr=stderr, env=env, close_fds=True)
    except BaseException:
        if proc is not None:
            stop(proc)
        raise
    return proc


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the child, if it is still there (safe from any thread)."""
    try:
        proc.kill()
    except OSError:  # already gone
        pass


def stop(proc: subprocess.Popen, grace: float = 0.0) -> int:
    """Wait up to `grace` seconds for the child to end on its own, then kill it; its exit status."""
    if grace > 0:
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    kill(proc)
    return proc.wait()


def exit_words(code: int | None) -> str:
    """An exit status in words: "exit status 1", "killed by SIGKILL"."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def last_line(stream: IO[bytes] | None) -> str:
    """The last non-blank line of what a (finished) child wrote to a stream, or ""."""
    if stream is None:
        return ""
    try:
        lines = [x for x in stream.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except (OSError, ValueError):
        return ""
    return lines[-1].strip() if lines else ""


class Child:
    """A child started with start(), answering JSON lines on its stdout.

    One thread talks to it at a time; kill() may come from any thread (a receive() waiting then
    raises ChildExited at once).
    """

    def __init__(self, module: str, args: Sequence[str] = (), *, stderr: Any = subprocess.DEVNULL,
                 pdeathsig: bool | None = None) -> None:
        self.proc = start(module, args, stderr=stderr, pdeathsig=pdeathsig)
        self._buffer = bytearray()  # what was read past the last whole line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, obj: Any) -> bool:
        """Write obj as one JSON line; False when the child no longer reads (it died)."""
        data = json.dumps(obj).encode("ascii") + b"\n"
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (OSError, ValueError):  # a broken pipe, or stdin already closed
            return False
        return True

    def receive(self, timeout: float) -> Any:
        """The next JSON line the child writes, within `timeout` seconds for the whole line.
        ChildTimeout when none came in time (the child is left running); ChildExited, after
        waiting for the child, when its output ended first."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        scanned = 0
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while (end := self._buffer.find(b"\n", scanned)) < 0:
                scanned = len(self._buffer)
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise ChildTimeout(f"no answer within {timeout:g} s")
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # a partial line left behind is no answer
                    raise ChildExited(self.proc.wait())
                self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return json.loads(line)

    def ask(self, obj: Any, timeout: float) -> Any:
        """send(), then receive(); ChildExited when the child could not be written to."""
        if not self.send(obj):
            raise ChildExited(self.proc.wait())
        return self.receive(timeout)

    def kill(self) -> None:
        kill(self.proc)

    def close(self, grace: float = 0.0) -> int:
        """End the child (its stdin closed first, then `grace` seconds to leave, then SIGKILL) and
        close the pipes; its exit status."""
        _close(self.proc.stdin)
        code = stop(self.proc, grace)
        _close(self.proc.stdout)
        _close(self.proc.stderr)
        return code


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:  # a broken pipe on the final flush
            pass


# ---- the child's side -----------------------------------------------------------------------------
def guard(ignore_interrupt: bool = False) -> None:
    """First thing in a child started by start(): end when the parent ends, even by SIGKILL.
    ignore_interrupt: leave Ctrl-C (SIGINT to the whole terminal's group) to the parent, which then
    stops this child itself."""
    if ignore_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = int(os.environ.pop(_PARENT_PID, "0") or 0)
    pdeathsig = os.environ.pop(_PDEATHSIG, "0") == "1"
    die_with_parent(parent, pdeathsig)


def send(obj: Any) -> None:
    """Write obj to stdout as one JSON line, flushed."""
    out = sys.stdout.buffer
    out.write(json.dumps(obj).encode("ascii") + b"\n")
    out.flush()


def commands() -> Iterator[Any]:
    """Each JSON line the parent sends on stdin, parsed, until it closes stdin (json.JSONDecodeError
    for a line that is not JSON)."""
    for line in sys.stdin.buffer:
        if line.strip():
            yield json.loads(line)

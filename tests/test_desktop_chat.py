"""samples/desktop_chat.py in a real Tk window on a virtual X screen (Xvfb), with real SmolLM2: the
answer streams in while the window keeps answering events, a screenshot is taken mid-answer, Stop ends
the reply at once, and the next question is answered with TTFT and tok/s in the status line."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import edgekit

pytestmark = pytest.mark.real
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "desktop_chat.py"


@pytest.fixture(scope="module")
def display():
    """A virtual X screen; scripts/test.sh installs Xvfb (Debian's xvfb)."""
    xvfb = shutil.which("Xvfb")
    assert xvfb, "Xvfb is missing: apt-get install xvfb (scripts/test.sh does)"
    for n in range(90, 110):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(
        [xvfb, f":{n}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.1)
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{n}"
    yield f":{n}"
    proc.terminate()
    proc.wait(timeout=10)
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old


@pytest.fixture(scope="module")
def smol(real_artifact) -> Path:
    return real_artifact("smollm2-135m-instruct", "gguf", "int4")


def _sample():
    spec = importlib.util.spec_from_file_location("desktop_chat", SAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pump(root, until, timeout: float) -> float:
    """Run the window's event loop until until() holds; the longest gap between two turns of it."""
    longest, last = 0.0, time.perf_counter()
    deadline = last + timeout
    while not until():
        assert time.perf_counter() < deadline, "timed out"
        root.update()
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        time.sleep(0.005)
    return longest


def test_the_window_streams_stops_and_answers_again(display, smol, tmp_path):
    import tkinter as tk

    from PIL import ImageGrab, ImageStat

    desktop = _sample()
    with edgekit.load(smol, threads=1) as engine:  # one thread: the window's own thread keeps a core
        root = tk.Tk()
        try:
            win = desktop.ChatWindow(root, engine, system="You are a helpful assistant.", max_tokens=200)
            _pump(root, lambda: root.winfo_viewable(), 10)
            win.entry.insert(0, "Write a short story about a lighthouse keeper and a storm.")
            win.send_button.invoke()
            assert str(win.send_button.cget("state")) == "disabled" and win.busy

            def answer() -> str:
                return win.transcript.get("1.0", "end").split("Model: ", 1)[-1]

            longest = _pump(root, lambda: len(answer().split()) >= 25, 120)
            assert win.busy, "the whole answer came before the screenshot"
            assert longest < 0.5, f"the window froze for {longest:.2f} s while the model worked"
            x, y = root.winfo_rootx(), root.winfo_rooty()
            shot = ImageGrab.grab(
                bbox=(x, y, x + root.winfo_width(), y + root.winfo_height()), xdisplay=display
            )
            path = tmp_path / "desktop_chat.png"
            shot.save(path)
            if os.environ.get("EDGEKIT_SCREENSHOTS"):  # a copy to look at
                shot.save(Path(os.environ["EDGEKIT_SCREENSHOTS"]) / "desktop_chat.png")
            assert shot.size[0] >= 600 and max(ImageStat.Stat(shot.convert("L")).stddev) > 10  # not blank

            words_at_stop = len(answer().split())
            win.stop_button.invoke()
            _pump(root, lambda: not win.busy, 5)
            assert win.last.finish_reason == "cancelled" and "[stopped]" in win.transcript.get("1.0", "end")
            assert len(answer().split()) < words_at_stop + 10  # it stopped there, not at the end
            assert engine.generate("Hi", max_tokens=2).tokens_out >= 1  # the engine is free

            win.entry.insert(0, "What is the capital of France?")
            win.send_button.invoke()
            _pump(root, lambda: not win.busy, 120)
            status = str(win.status.cget("text"))
            assert "TTFT" in status and "tok/s" in status and win.last.finish_reason in ("stop", "length")
            assert [m["role"] for m in win.messages] == ["system", "user", "assistant", "user", "assistant"]
        finally:
            root.destroy()

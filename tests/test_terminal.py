"""The CLI as a person sees it in a terminal: driven through a pty, rendered by a terminal emulator
(pyte), so progress bars, Ctrl-C and the stderr lines are checked on the screen itself.

With EDGEKIT_CAPTURE=DIR set, the rendered screens are also written to DIR/*.txt to be looked at.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # the CLI in a real terminal (pty)

pexpect = pytest.importorskip("pexpect")
pyte = pytest.importorskip("pyte")

COLUMNS, ROWS = 120, 40




def _spawn(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
    import io

    child = pexpect.spawn(sys.executable, ["-m", "edgekit.cli", *args], dimensions=(ROWS, COLUMNS),
                          env={**os.environ, "COLUMNS": str(COLUMNS), **(env or {})}, cwd=cwd, timeout=120)
    child.logfile_read = io.BytesIO()  # every byte the terminal received, for the rendered screen
    return child


def _ask(child, line: str) -> None:
    """Type a line at the chat's prompt and wait for its echo. When readline turned bracketed paste on
    with the prompt, the echo ends with the escape that turns it off: it must be waited for whole, or
    a later expect of the reply's first character would match the escape instead (and a Ctrl-C sent
    then would land before the reply started)."""
    import re

    paste = b"\x1b[?2004h" in child.before  # the prompt (just expected) turned it on
    child.sendline(line)
    child.expect(re.escape(line) + r"\r\n" + (r"\x1b\[\?2004l\r" if paste else ""))


def _screen(raw: bytes, name: str) -> str:
    """What the terminal shows after these bytes (cursor moves and redraws applied)."""
    screen = pyte.Screen(COLUMNS, ROWS * 4)
    pyte.ByteStream(screen).feed(raw.replace(b"\n", b"\r\n") if b"\r\n" not in raw else raw)
    text = "\n".join(line.rstrip() for line in screen.display).rstrip() + "\n"
    target = os.environ.get("EDGEKIT_CAPTURE")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / f"{name}.txt").write_text(text, encoding="utf-8")
    return text


def _run_to_end(child) -> bytes:
    """Wait for the command to end; everything it wrote to the terminal."""
    child.read()  # until EOF
    child.close()
    return child.logfile_read.getvalue()


def test_convert_progress_says_which_format_and_leaves_no_stale_bar(tiny_checkpoint, tmp_path):
    child = _spawn(["convert", str(tiny_checkpoint("qwen2")), "--to", "onnx,gguf", "-q", "int4"],
                   cwd=tmp_path)
    screen = _screen(_run_to_end(child), "convert")
    assert child.exitstatus == 0, screen
    lines = screen.splitlines()
    bars = [line for line in lines if "━" in line or "/" in line and "writing" in line]
    assert any(line.startswith("ONNX writing tensors") for line in bars), screen
    assert any(line.startswith("GGUF writing tensors") for line in bars), screen
    assert any(line.startswith("GGUF quantizing (llama.cpp)") for line in bars), screen
    assert any(line.startswith("ONNX verifying fidelity") and "4/4" in line for line in bars), screen
    assert "fidelity against transformers" in screen  # each artifact's verdict under its line
    stale = [line for line in lines if " 0/" in line]
    assert not stale, f"bars left unfinished: {stale}\n{screen}"
    out = tmp_path / "qwen2-int4"  # the default folder: NAME-QUANT/FORMAT
    unwrapped = screen.replace("\n", "")  # long paths wrap at the screen's edge
    assert f"wrote {out / 'onnx'} (onnx int4" in unwrapped
    assert f"wrote {out / 'gguf'} (gguf int4 (Q4_K_M)" in unwrapped


def test_summarize_streams_its_summary_after_the_bars_leave(tiny_model, tmp_path):
    """The bars of the chunks being summarized, then the summary streaming from the start of a line:
    no bar left half-drawn, none sharing a line with the text."""
    import corpus

    doc = corpus.write(tmp_path / "notes.md", corpus.long_sections(1), "Notes")
    child = _spawn(["summarize", str(doc), "-m", str(tiny_model), "-w", "12", "--chunk-tokens", "200",
                    "-c", "512"])
    raw = _run_to_end(child)
    screen = _screen(raw, "summarize")
    assert child.exitstatus == 0, screen
    assert "━".encode() in raw  # the bars were drawn while the chunks were summarized
    lines = screen.splitlines()
    assert lines[0] == "# Summary of notes.md", screen  # nothing of a bar before or beside it
    assert not [line for line in lines if "━" in line], screen
    assert any(line.startswith("[") and "chunks" in line and "tokens; model" in line for line in lines)


@pytest.fixture(scope="module")
def slow_tokens(tmp_path_factory) -> dict[str, str]:
    """Every generated token takes 30 ms more, so that a Ctrl-C lands in the middle of a reply."""
    from helpers import slow_tokens_env

    return slow_tokens_env(tmp_path_factory.mktemp("slow"), 0.03)


@pytest.fixture(scope="module")
def chat_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    import edgekit

    out = tmp_path_factory.mktemp("chat") / "g"
    return edgekit.convert(str(tiny_checkpoint("qwen2")), to="gguf", quant="fp16", output=out).path


def test_ctrl_c_in_chat_stops_the_reply_not_the_chat(chat_artifact, slow_tokens):
    # 150 tokens at 30 ms each: the reply is still streaming when Ctrl-C comes
    child = _spawn(["chat", str(chat_artifact), "-n", "150", "--seed", "1"], env=slow_tokens)
    child.expect_exact("> ")
    _ask(child, "Tell me a long story")
    child.expect(r"\S")  # the reply has started streaming
    child.sendintr()  # Ctrl-C, through the terminal, as a person presses it
    child.expect_exact("[stopped]")
    child.expect(r"cancelled; llama\.cpp on cpu")  # the reply's numbers, then the chat goes on
    child.expect_exact("> ")
    _ask(child, "And another")
    child.expect(r"\S")
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact("> ")
    child.sendline("/bye")  # ends the chat normally
    screen = _screen(_run_to_end(child), "chat-ctrl-c")
    assert child.exitstatus == 0, screen
    assert "Traceback" not in screen and "error:" not in screen and screen.count("[stopped]") == 2


def test_ctrl_c_at_the_prompt_ends_the_chat_quietly(chat_artifact):
    child = _spawn(["chat", str(chat_artifact)])
    child.expect_exact("> ")
    child.sendintr()
    raw = _run_to_end(child)
    assert child.exitstatus == 130, raw
    assert b"Traceback" not in raw and b"error:" not in raw


def test_run_and_chat_as_a_person_sees_them(chat_artifact):
    """Text, then the numbers line (dimmed, on stderr), in the terminal."""
    child = _spawn(["run", str(chat_artifact), "Once upon a time", "-n", "12", "--seed", "3"])
    screen = _screen(_run_to_end(child), "run")
    assert child.exitstatus == 0, screen
    assert "12 tokens, TTFT" in screen and "tok/s, length; llama.cpp on cpu, gguf fp16]" in screen
    child = _spawn(["chat", str(chat_artifact), "-n", "8", "--system", "Be brief.", "--seed", "2"])
    child.expect_exact("> ")
    child.sendline("Hi there")
    child.expect(r"tok/s")
    child.expect_exact("> ")
    child.sendline("/bye")
    screen = _screen(_run_to_end(child), "chat")
    assert child.exitstatus == 0, screen
    banner, first = screen.splitlines()[:2]
    assert banner.startswith("chatting with g (llama.cpp on cpu); /help") and first == "> Hi there"
    assert "8 tokens, TTFT" in screen


def test_the_chat_prompt_edits_recalls_pastes_and_answers_its_commands(chat_artifact, tmp_path):
    """As a person types: a banner; /help answered by edgekit; an empty line asks nothing; a pasted
    paragraph of three lines (bracketed paste) is one message; the up arrow recalls it; /bye ends."""
    child = _spawn(["chat", str(chat_artifact), "-n", "4", "--seed", "1"],
                   env={"EDGEKIT_CACHE": str(tmp_path / "cache")})
    child.expect_exact("/help for commands")
    child.expect_exact("> ")
    child.sendline("/help")
    child.expect_exact("/clear")  # edgekit's list, not a reply of the model
    child.expect_exact("> ")
    child.sendline("")  # nothing asked, nothing answered: the prompt again
    child.expect_exact("> ")
    child.send("\x1b[200~first line\nsecond line\nthird line\x1b[201~\r")
    child.expect(r"tok/s")
    child.expect_exact("> ")
    child.send("\x1b[A\r")  # up arrow: the pasted message again, then Enter
    child.expect(r"tok/s")
    child.expect_exact("> ")
    child.sendline("/set top_p 5")  # refused: out of range
    child.expect_exact("error: top_p")
    child.expect_exact("> ")
    child.sendline("/bye")
    screen = _screen(_run_to_end(child), "chat-prompt")
    assert child.exitstatus == 0, screen
    assert screen.count("tok/s") == 2, screen  # two replies: the paste was one message, recalled once
    assert "Traceback" not in screen and (tmp_path / "cache" / "chat-history").is_file()

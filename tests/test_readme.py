"""Every example in README.md runs exactly as written, so the README cannot drift from the code.

The examples run in one folder, the Python block first (each block converts what it runs), where the
placeholders they name exist: `./my-student` and the other students are tiny random checkpoints, the
documents are short, and the hub id resolves offline from a huggingface_hub cache holding the
bundled SmolLM2. The Python block runs as a script in this process (what it imports is imported
once); the CLI lines run through the CLI in this process (the same command line, without a cold
interpreter for each), and two of them as real `edgekit` processes, the console script a user's
shell finds. The real models they convert are shared
with the tests that only read such artifacts (`real_artifact.adopt`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# lines a chat example reads from its terminal: one question, then /bye
CHAT_INPUT = "Name three colors.\n/bye\n"
# the CLI lines that run as real processes of the installed console script
AS_PROCESSES = ("edgekit devices --json", "edgekit --version")

pytestmark = pytest.mark.real


def _blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def _commands(body: str) -> list[str]:
    """A console block's commands: every line but the comment-only ones (the shell drops the rest's)."""
    return [line.strip() for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # 540 MB of SmolLM2, never written to: a link does
    except OSError:  # another file system
        shutil.copy2(src, dst)


def test_every_block_is_runnable_or_marked_as_text():
    languages = [lang for lang, _ in _blocks()]
    assert languages.count("python") == 1 and languages.count("console") == 1
    assert set(languages) <= {"bash", "python", "console", "text"}, "a block without a language"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_checkpoint, smollm2_dir) -> tuple[Path, dict[str, str]]:
    """A folder with the README's student checkpoints, and an environment whose hub cache has SmolLM2."""
    work = tmp_path_factory.mktemp("readme")
    for name, arch in (("my-student", "llama-smollm2"), ("distilbert-student", "distilbert"),
                       ("phi-3.5-mini-student", "phi3")):
        shutil.copytree(tiny_checkpoint(arch), work / name)
    import corpus  # the documents the summarize examples read

    corpus.write(work / "report.pdf", corpus.sections("Honeybees"), "Field notes")  # one chunk: the
    # chunking and merging of long documents by the real model is tests/test_summarize_real.py's
    for i, topic in enumerate(("Lighthouses", "Roman aqueducts", "Solar panels")):
        corpus.write(work / "contracts" / ("old" if i else "") / f"{i}{('.docx', '.md', '.html')[i]}",
                     corpus.sections(topic), topic)
    (work / "town.schema.json").write_text(json.dumps({  # the files the structured-output lines name
        "type": "object", "properties": {"name": {"type": "string"}, "founded": {"type": "integer"}},
        "required": ["name", "founded"]}))
    (work / "tools.json").write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]))
    hub = work / ".hf" / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(smollm2_dir, hub / "snapshots" / commit, copy_function=_link_or_copy)  # read only
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HOME": str(work / ".hf"), "HF_HUB_OFFLINE": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    return work, env


def test_the_python_example(sandbox, real_artifact, monkeypatch, capsys):
    """The Python block in this process, as a script (`__main__`), in the sandbox folder."""
    from huggingface_hub import constants

    work, env = sandbox
    (code,) = [body for lang, body in _blocks() if lang == "python"]
    monkeypatch.chdir(work)
    for name in ("HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, env[name])
    # huggingface_hub read HF_HOME when it was imported: the hub id resolves through the cache named here
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(env["HF_HOME"]) / "hub"))
    exec(compile(code, str(README), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "Q4_K_M" in out and "rows of 576 values" in out  # r.note explains the 6.2 bits
    assert "latency budget missed: total" in out  # the raise-mode example: cut short, text kept
    assert "tool_calls get_weather {'city'" in out  # the forced call, with its arguments parsed
    for made in ("out/smol/onnx", "out/smol/gguf", "out/minilm"):
        real_artifact.adopt(work / made)


def test_the_cli_examples(sandbox, real_artifact, monkeypatch):
    """The command-line quickstart, on its own artifacts (it converts what it runs)."""
    from huggingface_hub import constants

    from helpers import cli

    work, env = sandbox
    (body,) = [body for lang, body in _blocks() if lang == "console"]
    commands = _commands(body)
    assert len(commands) >= 15 and all(c.startswith("edgekit ") for c in commands)
    assert set(AS_PROCESSES) <= set(commands)
    # huggingface_hub read HF_HOME when it was imported: the in-process lines name the cache directly
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(env["HF_HOME"]) / "hub"))
    for command in commands:
        stdin = CHAT_INPUT if command.startswith("edgekit chat") else None
        if command in AS_PROCESSES:
            p = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True,
                               input=stdin, timeout=900)
        else:
            p = cli(*shlex.split(command, comments=True)[1:], input=stdin, cwd=work,
                    env={"HF_HOME": env["HF_HOME"], "HF_HUB_OFFLINE": "1"})
        # --budget exits 1 on a miss, as documented: on a machine busy elsewhere that is a right answer
        missed = "--budget" in command and p.returncode == 1 and "latency budget missed" in p.stderr
        assert p.returncode == 0 or missed, f"{command}\n{p.stderr[-3000:]}"
        assert "Traceback" not in p.stderr, command
    for made in ("out/q4/onnx", "out/q4/gguf", "out/embedder"):
        real_artifact.adopt(work / made)


def test_the_fresh_machine_commands_exist_and_the_demo_runs():
    """scripts/test.sh is what CI runs (this suite inside it); scripts/demo.sh runs here as written."""
    (body,) = [body for lang, body in _blocks() if lang == "bash"]
    commands = [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    root = README.parent
    p = subprocess.run(["bash", "scripts/demo.sh"], cwd=root, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "> Name three colors." in p.stdout and "tok/s decode" in p.stdout

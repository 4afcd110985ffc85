"""The CLI mirrors edgekit.convert; user errors are one line and a non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import cli as _cli  # in this process; the tests of the real process use _process


def _process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True)


def test_convert_json_and_info(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    p = _cli("convert", str(tiny_checkpoint("qwen2")), "--to", "gguf", "--quant", "int8", "-o", str(out),
             "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["ok"] and len(data["artifacts"]) == 1  # one shape for one format and for several
    artifact = data["artifacts"][0]
    assert artifact["quant"] == "Q8_0" and artifact["label"] == "int8" and Path(artifact["path"]) == out
    assert artifact["tensor_types"]["Q8_0"] > 0
    info = _cli("info", str(out), "--json")
    assert info.returncode == 0
    assert json.loads(info.stdout)["manifest"]["quantization"]["scheme"] == "Q8_0"


def test_user_error_is_one_line_no_traceback(tmp_path):
    p = _process("convert", str(tmp_path / "missing"), "--to", "gguf")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")
    pj = _process("convert", str(tmp_path / "missing"), "--json")
    assert pj.returncode == 1
    assert json.loads(pj.stdout)["error"] == "SourceNotFoundError"


def test_output_exists_exit_code(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p = _cli("convert", str(tiny_checkpoint("qwen2")), "--quant", "fp16", "-o", str(out))
    assert p.returncode == 1 and "already exists" in p.stderr and "Traceback" not in p.stderr


def test_info_detects_tampering(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--quant", "fp16", "-o", str(out)).returncode == 0
    model = next(out.glob("*.gguf"))
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    p = _cli("info", str(out))
    assert p.returncode == 1 and "sha256 differs" in p.stderr


def test_run_and_devices(tiny_checkpoint, tmp_path):
    out = tmp_path / "onnx"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--to", "onnx", "--quant", "fp32",
                "-o", str(out)).returncode == 0
    p = _cli("run", str(out), "Hello", "-n", "5", "--device", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["tokens_out"] <= 5 and data["device"] == "cpu" and data["ttft_ms"] > 0
    d = _cli("devices", "--json")
    report = json.loads(d.stdout)
    assert "cpu" in report["onnxruntime"]["devices"] and "cpu" in report["llama.cpp"]["devices"]


def test_run_on_missing_artifact_is_one_line(tmp_path):
    p = _cli("run", str(tmp_path / "nothing"), "hi")
    assert p.returncode == 1 and "no artifact, bundled model or checkpoint" in p.stderr
    assert "Traceback" not in p.stderr and "edgekit bundled --list" in p.stderr
    p = _cli("run", "smollm2-135m-instrct", "hi", cwd=tmp_path)  # a typo: the bundled name is offered
    assert p.returncode == 1 and "did you mean smollm2-135m-instruct?" in p.stderr
    p = _cli("run", str(tmp_path), "hi")  # a folder that is not one
    assert p.returncode == 1 and "not an edgekit artifact" in p.stderr


def test_run_takes_every_sampling_option(tiny_checkpoint, tmp_path):
    out = tmp_path / "g"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--quant", "fp32", "-o", str(out)).returncode == 0
    args = ["run", str(out), "Numbers: 1 2 3", "-n", "8", "--temp", "0.8", "--top-k", "5", "--top-p", "0.9",
            "--min-p", "0.05", "--repeat-penalty", "1.1", "--seed", "7", "--ignore-eos", "--device", "cpu",
            "--json"]
    first, second = _cli(*args), _cli(*args)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["tokens_out"] == 8 and data["finish_reason"] == "length"
    assert json.loads(second.stdout)["text"] == data["text"]  # same seed, same text
    bad = _cli("run", str(out), "x", "--top-p", "0", "--device", "cpu")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "top_p" in bad.stderr
    penalized = _cli(*args[:-1], "--frequency-penalty", "1.5", "--presence-penalty", "-0.5", "--json")
    assert penalized.returncode == 0 and json.loads(penalized.stdout)["tokens_out"] == 8, penalized.stderr
    bad = _cli("run", str(out), "x", "--presence-penalty", "3", "--device", "cpu")
    assert bad.returncode == 1 and "presence_penalty must be in [-2, 2]" in bad.stderr
    scored = json.loads(_cli(*args[:-1], "--logprobs", "2", "--json").stdout)["logprobs"]
    assert len(scored) == 8 and all(len(t["top"]) == 2 and t["logprob"] <= 0 for t in scored)
    bad = _cli("run", str(out), "x", "--logprobs", "2", "--device", "cpu")
    assert bad.returncode == 1 and "add --json" in bad.stderr


def test_run_reads_its_prompt_from_stdin(tiny_checkpoint, tmp_path):
    """`-` or a pipe with no prompt: the prompt is stdin (cat notes.txt | edgekit run ART -)."""
    out = tmp_path / "g"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--quant", "fp32", "-o", str(out)).returncode == 0
    given = _cli("run", str(out), "Numbers: 1 2 3", "--raw", "-n", "6", "--temp", "0", "--json")
    for args in (["-"], []):
        piped = _cli("run", str(out), *args, "--raw", "-n", "6", "--temp", "0", "--json",
                     input="Numbers: 1 2 3")
        assert piped.returncode == 0, piped.stderr
        assert json.loads(piped.stdout)["text"] == json.loads(given.stdout)["text"]
    empty = _cli("run", str(out), "-", input="")
    assert empty.returncode == 1 and "stdin was empty" in empty.stderr


def test_embed_command_and_run_on_an_embedder(tiny_checkpoint, tmp_path):
    out = tmp_path / "bert"
    converted = _cli("convert", str(tiny_checkpoint("bert")), "--to", "onnx", "-q", "fp32", "-o", str(out))
    assert converted.returncode == 0, converted.stderr
    human = _cli("embed", str(out), "a cat", "a dog", "--threads", "1")
    assert human.returncode == 0, human.stderr
    rows = [line.split() for line in human.stdout.strip().splitlines()]
    assert len(rows) == 2 and len(rows[0]) == 64  # one line of 64 numbers per text: pipeable
    data = json.loads(_cli("embed", str(out), "a cat", "--json").stdout)
    assert data["ok"] and data["dim"] == 64 and len(data["vectors"]) == 1
    assert abs(data["vectors"][0][0] - float(rows[0][0])) < 1e-5
    wrong = _cli("run", str(out), "hello")
    assert wrong.returncode == 1 and "embedding model: use embed()" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_threads_and_context_size_options(tiny_checkpoint, tmp_path):
    import edgekit

    out = tmp_path / "o"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--to", "onnx", "--quant", "fp32", "-o",
                str(out)).returncode == 0
    p = _cli("run", str(out), "Hello", "-n", "4", "-t", "1", "-c", "64", "--json")  # llama.cpp's letters
    assert p.returncode == 0, p.stderr
    with edgekit.load(out, n_ctx=64, threads=1) as engine:
        assert engine.backend.context_length == 64
    bad = _cli("run", str(out), "Hello", "--threads", "0")
    assert bad.returncode == 1 and "threads must be a whole number >= 1" in bad.stderr


def test_run_and_chat_show_their_numbers_on_stderr(tiny_checkpoint, tmp_path):
    """stdout carries the text alone (pipeable); stderr one line with TTFT, tok/s, backend and device."""
    out = tmp_path / "g"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--quant", "fp32", "-o", str(out)).returncode == 0
    run = _cli("run", str(out), "Hello", "-n", "6", "--ignore-eos", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert "6 tokens, TTFT" in run.stderr and "tok/s" in run.stderr
    assert "llama.cpp on cpu, gguf fp32" in run.stderr
    assert "TTFT" not in run.stdout
    data = json.loads(_cli("run", str(out), "Hello", "-n", "3", "--device", "cpu", "--json").stdout)
    where = (data["backend"], data["device"], data["format"], data["quant"])
    assert where == ("llama.cpp", "cpu", "gguf", "fp32")
    chat = subprocess.run([sys.executable, "-m", "edgekit.cli", "chat", str(out), "-n", "5", "--seed", "1",
                           "--system", "You are terse.", "--device", "cpu"], input="Hello\n\n",
                          capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.count("TTFT") == 1 and "llama.cpp on cpu" in chat.stderr
    # a conversation longer than the context goes on: its oldest turns leave, every reply comes
    lines = "".join(f"Question number {i} about the weather tomorrow\n" for i in range(12))
    lines = lines + "word " * 400 + "\nOne more question\n\n"  # a message alone too long: said, skipped
    long = subprocess.run([sys.executable, "-m", "edgekit.cli", "chat", str(out), "-n", "24", "-c", "256",
                           "--system", "You are terse.", "--device", "cpu", "--temp", "0"],
                          input=lines, capture_output=True, text=True, timeout=300)
    assert long.returncode == 0 and long.stderr.count("TTFT") == 13, long.stderr
    assert "but the context window is 256" in long.stderr
    assert "oldest messages left the conversation to fit the context of 256 tokens" in long.stderr


def test_generation_config_gives_the_sampling_defaults(tiny_checkpoint, tmp_path):
    import shutil

    import edgekit

    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("qwen2"), src)
    (src / "generation_config.json").write_text(json.dumps({"temperature": 0.2, "top_p": 0.9,
                                                            "repetition_penalty": 1.1, "eos_token_id": 2}))
    artifact = edgekit.convert(str(src), to="gguf", quant="fp32", output=tmp_path / "a").path
    with edgekit.load(artifact, device="cpu") as engine:
        assert engine.model_sampling() == {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}
        # what the model does not set comes from llama.cpp's interactive defaults
        assert engine.generation_defaults() == {"temperature": 0.2, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
                                                "repeat_penalty": 1.1}
    (src / "generation_config.json").write_text(json.dumps({"do_sample": False, "top_p": 7, "top_k": -1}))
    greedy = edgekit.convert(str(src), to="gguf", quant="fp32", output=tmp_path / "b").path
    with edgekit.load(greedy, device="cpu") as engine:  # do_sample false: greedy; invalid values: dropped
        assert engine.model_sampling() == {"temperature": 0.0}


def test_list_finds_artifacts_and_run_on_their_parent_points_to_them(tiny_checkpoint, tmp_path):
    parent = tmp_path / "smol"
    converted = _cli("convert", str(tiny_checkpoint("qwen2")), "--to", "onnx,gguf", "-q", "int8",
                     "-o", str(parent))
    assert converted.returncode == 0, converted.stderr
    listed = json.loads(_cli("list", str(tmp_path), "--json").stdout)["artifacts"]
    assert sorted((a["format"], a["quant"]) for a in listed) == [("gguf", "int8"), ("onnx", "int8")]
    assert all(a["architecture"] == "Qwen2ForCausalLM" and a["size_mb"] > 0 for a in listed)
    human = _cli("list", str(tmp_path))
    assert human.returncode == 0
    assert str(parent / "gguf") in human.stdout and str(parent / "onnx") in human.stdout
    wrong = _cli("run", str(parent), "Hello")
    assert wrong.returncode == 1
    assert f"it holds artifacts: {parent / 'gguf'}, {parent / 'onnx'}" in wrong.stderr


def test_help_lists_bundled_names_and_sampling_defaults():
    from edgekit.bundled import NAMES

    bundled_help = _cli("bundled", "-h").stdout
    assert all(name in bundled_help for name in NAMES)
    run_help = _cli("run", "-h").stdout
    assert "else 40" in run_help and "default: 128" in run_help and "--threads" in run_help


def test_run_uses_the_chat_template_unless_raw(tiny_checkpoint, tmp_path):
    """As ollama does: the prompt is a user message in the artifact's chat template; --raw completes it."""
    out = tmp_path / "g"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--quant", "fp32", "-o", str(out)).returncode == 0
    chat = json.loads(_cli("run", str(out), "Hello", "-n", "2", "--json").stdout)
    raw = json.loads(_cli("run", str(out), "Hello", "-n", "2", "--raw", "--json").stdout)
    assert chat["prompt_mode"] == "chat" and raw["prompt_mode"] == "raw"
    assert chat["tokens_in"] > raw["tokens_in"] + 5  # the template's role markers around "Hello"
    human = _cli("run", str(out), "Hello", "-n", "2", "--raw")
    assert "; raw prompt]" in human.stderr


def test_budget_on_the_command_line(tiny_checkpoint, tmp_path):
    """--budget: PASS/FAIL on stderr and in --json; a miss exits 1, a malformed budget 2 naming the part."""
    out = tmp_path / "g"
    assert _cli("convert", str(tiny_checkpoint("qwen2")), "--quant", "fp32", "-o", str(out)).returncode == 0
    ok = _cli("run", str(out), "Hello", "-n", "4", "--budget", "ttft=60s,total=120s,rss=100GB")
    assert ok.returncode == 0, ok.stderr
    assert "[budget ttft=60000ms,total=120000ms,rss=100000MB: PASS]" in ok.stderr
    missed = _cli("run", str(out), "Hello", "-n", "4", "--budget", "ttft=0.001ms", "--json")
    assert missed.returncode == 1
    data = json.loads(missed.stdout)
    assert data["ok"] and data["text"] is not None and data["budget"]["missed"] == ["ttft"]
    human = _cli("run", str(out), "Hello", "-n", "4", "--budget", "ttft=0.001ms")
    assert human.returncode == 1 and "FAIL, latency budget missed: TTFT" in human.stderr
    bad = _cli("run", str(out), "Hello", "--budget", "ttft=fast")
    assert bad.returncode == 2 and "'ttft=fast'" in bad.stderr and "Traceback" not in bad.stderr


def test_default_output_names_have_one_shape(tiny_checkpoint, tmp_path):
    ckpt = str(tiny_checkpoint("qwen2"))
    for args in (["--to", "gguf", "-q", "int8"], ["--to", "onnx", "-q", "int8"],
                 ["--to", "gguf", "-q", "Q5_K_M"], ["--to", "onnx,gguf", "-q", "fp16"]):
        p = _cli("convert", ckpt, *args, "--json", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    made = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("edgekit.json"))
    assert made == ["qwen2-fp16/gguf", "qwen2-fp16/onnx", "qwen2-gguf-int8", "qwen2-gguf-q5_k_m",
                    "qwen2-onnx-int8"]


def _documented_shapes() -> dict[str, tuple[set[str], set[str]]]:
    """docs/cli.md's JSON table: command -> (its keys, the keys of each item), optional ones left out."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = doc.split("## JSON", 1)[1].split("\n## ", 1)[0]
    shapes = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`\w+`", cells[0]):
            continue
        keys, items = (set(re.findall(r"`([\w.]+)`", c.split("(")[0])) for c in cells[1:])
        shapes[cells[0].strip("`")] = (keys, items)
    return shapes


def test_json_shapes_are_the_documented_ones(tiny_checkpoint, tmp_path):
    shapes = _documented_shapes()
    assert set(shapes) == {"convert", "run", "embed", "info", "list", "bundled", "devices", "verify",
                           "profile", "summarize"}
    out = tmp_path / "g"
    bert = tmp_path / "b"
    outputs = {
        "convert": _cli("convert", str(tiny_checkpoint("qwen2")), "-q", "fp32", "-o", str(out), "--json"),
        "run": _cli("run", str(out), "Hi", "-n", "2", "--json"),
        "info": _cli("info", str(out), "--json"),
        "list": _cli("list", str(tmp_path), "--json"),
        "bundled": _cli("bundled", "--json"),
        "verify": _cli("verify", str(out), "--reference", str(tiny_checkpoint("qwen2")), "--json"),
        "profile": _cli("profile", str(out), "-p", "8", "-n", "4", "-r", "1", "--json"),
        "devices": _cli("devices", "--json"),
    }
    (tmp_path / "doc.md").write_text("# Notes\n\nBees make honey. They dance to show the way.\n")
    outputs["summarize"] = _cli("summarize", str(tmp_path / "doc.md"), "-m", str(out), "-c", "1024",
                                "-w", "10", "--json")
    _cli("convert", str(tiny_checkpoint("bert")), "--to", "onnx", "-q", "fp32", "-o", str(bert))
    outputs["embed"] = _cli("embed", str(bert), "a cat", "--json")
    listed = json.loads(_cli("bundled", "--list", "--json").stdout)
    assert [m["name"] for m in listed["models"]] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert set(listed["models"][0]) == {"name", "task", "description", "default"}
    for command, p in outputs.items():
        assert p.returncode == 0, (command, p.stderr)
        data = json.loads(p.stdout)
        keys, items = shapes[command]
        assert data.pop("ok") is True and set(data) == keys, command
        if items:
            (listed,) = [v for k, v in data.items() if isinstance(v, list) and k != "warnings"]
            for item in listed:
                assert set(item) == items, command
    error = json.loads(_cli("info", str(tmp_path / "nothing"), "--json").stdout)
    assert set(error) == {"ok", "error", "message", "exit_code"} and error["ok"] is False


def test_a_missing_extra_is_a_hint_not_a_traceback(tiny_checkpoint, tmp_path):
    """Converting to ONNX where the onnx package cannot be imported: one line naming the extra to
    install, exit 1, nothing written (a real process: the import is blocked in a sitecustomize)."""
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['onnx'] = None  # as if not installed\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "edgekit.cli", "convert", str(tiny_checkpoint("qwen2")), "--to",
                        "onnx", "-q", "int8", "-o", str(out)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 1 and "edgekit[onnx]" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()


def test_a_gguf_made_elsewhere_runs_as_it_is(tiny_artifact, tmp_path):
    """`edgekit run model.gguf`, as llama-cli users run one: the file alone (no edgekit.json beside it)
    is wrapped once as an artifact in the cache, linked and not converted, with the chat template,
    special tokens and quantization its own header holds; a replaced file is wrapped again."""
    import shutil

    made = tiny_artifact("qwen2", "gguf", "int8")
    ours = json.loads((made / "edgekit.json").read_text())
    shutil.copyfile(made / ours["model_file"], tmp_path / "downloaded.gguf")
    env = {"EDGEKIT_CACHE": str(tmp_path / "cache")}
    args = ["run", "downloaded.gguf", "Hello", "-n", "3", "--temp", "0", "--json"]
    first, second = _cli(*args, env=env, cwd=tmp_path), _cli(*args, env=env, cwd=tmp_path)
    assert first.returncode == 0 and "made outside edgekit: wrapping it once" in first.stderr, first.stderr
    assert second.returncode == 0 and "wrapping" not in second.stderr, second.stderr
    assert json.loads(first.stdout)["text"] == json.loads(second.stdout)["text"]
    wrapped = Path(json.loads(first.stdout)["artifact"])
    theirs = json.loads((wrapped / "edgekit.json").read_text())
    assert theirs["model_file"] == "downloaded.gguf"
    assert (wrapped / "downloaded.gguf").stat().st_ino == (tmp_path / "downloaded.gguf").stat().st_ino
    assert theirs["chat_template"] == ours["chat_template"] and theirs["exporter"] == "imported GGUF"
    assert theirs["tokenizer"]["special_ids"] == ours["tokenizer"]["special_ids"]
    assert theirs["quantization"]["label"] == "int8" and "fidelity" not in theirs
    with_template = _cli("run", "downloaded.gguf", "Hi", "-n", "2", "--json", env=env, cwd=tmp_path)
    assert json.loads(with_template.stdout)["prompt_mode"] == "chat"
    info = _cli("info", str(wrapped), env=env)
    assert "imported from" in info.stdout and "not verified" in info.stdout
    verify = _cli("verify", str(wrapped), env=env)
    assert verify.returncode == 1 and "--reference DIR" in verify.stderr
    (tmp_path / "downloaded.gguf").unlink()  # a new download at the same path
    shutil.copyfile(made / ours["model_file"], tmp_path / "downloaded.gguf")
    again = _cli(*args, env=env, cwd=tmp_path)
    assert again.returncode == 0 and "wrapping it once" in again.stderr
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [
        Path(json.loads(again.stdout)["artifact"]).name]  # the old wrap (and its link) is gone


def test_model_references_are_converted_once_then_reused(tiny_checkpoint, tmp_path, monkeypatch):
    """`edgekit run REF` as ollama users type it: a checkpoint folder and a hub id in the local cache
    become artifacts once (a line says so), the second run reuses them; a broken .gguf is refused by
    name, and a bundled name resolves as documented."""
    import shutil

    from huggingface_hub import constants

    env = {"EDGEKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    shutil.copytree(tiny_checkpoint("qwen2"), tmp_path / "student")
    hub = tmp_path / "hf" / "models--tiny--qwen2"
    shutil.copytree(tiny_checkpoint("qwen2"), hub / "snapshots" / ("0" * 40))
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for ref in ("student", "tiny/qwen2"):
        args = ["run", ref, "Hello", "-n", "3", "--temp", "0", "--json"]
        first, second = _cli(*args, env=env, cwd=tmp_path), _cli(*args, env=env, cwd=tmp_path)
        assert first.returncode == 0 and "converting it once to onnx int4" in first.stderr, first.stderr
        assert second.returncode == 0 and "converting" not in second.stderr, second.stderr
        assert json.loads(first.stdout)["text"] == json.loads(second.stdout)["text"]
    assert len(list((tmp_path / "cache" / "models").glob("*-onnx-int4"))) == 2
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    p = _cli("run", "model.gguf", "hi", env=env, cwd=tmp_path)
    assert p.returncode == 1 and "model.gguf" in p.stderr and "not a valid GGUF" in p.stderr

    from edgekit.conversion import pipeline, references

    asked = []
    monkeypatch.setattr(pipeline, "convert", lambda source, **kw: asked.append((source, kw["output"])))
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache2"))
    made = references.artifact_for("smollm2-135m-instruct")  # a bundled name: its conversion is asked
    assert asked == [("bundled:smollm2-135m-instruct", made)]
    assert made == tmp_path / "cache2" / "models" / "smollm2-135m-instruct-onnx-int4"

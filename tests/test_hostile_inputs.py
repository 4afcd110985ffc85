"""What a hostile or careless user can feed edgekit: each case ends in one typed error (one line
and a non-zero exit in the CLI), the user's files intact, the process alive, the time bounded and
nothing half-written left behind. Native loads of suspicious files run in a child process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.artifact import MANIFEST, sha256_file
from edgekit.errors import (
    ArtifactError,
    CheckpointFormatError,
    ConversionError,
    OutputExistsError,
    TokenizerError,
    UnsafePathError,
)

from helpers import cli as _cli  # in this process; _process where the test needs a real one
from helpers import leftovers


def _convert(src, out, **kw):
    return edgekit.convert(str(src), to=kw.pop("to", "gguf"), quant=kw.pop("quant", "fp16"), output=out, **kw)


def _process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True,
                          timeout=300)


def _one_line(p: subprocess.CompletedProcess, code: int = 1) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def _write_config(ckpt: Path, **changes) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _rewrite_tensor(ckpt: Path, name: str, fn) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    tensors[name] = fn(tensors[name])
    save_file(tensors, ckpt / "model.safetensors")


# ---- data loss ---------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["source", "parent", "inside"])
def test_overwrite_never_touches_the_source(ckpt, where):
    (ckpt.parent / "unrelated.txt").write_text("keep me")
    before = _tree(ckpt.parent)
    out = {"source": ckpt, "parent": ckpt.parent, "inside": ckpt / "gguf"}[where]
    with pytest.raises(OutputExistsError, match="source checkpoint"):
        _convert(ckpt, out, overwrite=True)
    assert _tree(ckpt.parent) == before


def test_overwrite_never_replaces_a_user_folder(ckpt, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    p = _cli("convert", str(ckpt), "--quant", "fp16", "-o", str(out), "--overwrite")
    assert "not an edgekit artifact" in _one_line(p)
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8 precious"


def test_overwrite_replaces_an_earlier_artifact(ckpt, tmp_path):
    out = tmp_path / "out"
    first = _convert(ckpt, out, quant="fp16")
    second = _convert(ckpt, out, quant="int8", overwrite=True)
    assert second.quant == "Q8_0" and not (out / first.manifest["model_file"]).exists()
    assert leftovers(out) == ["out"]


def test_folder_created_during_conversion_is_left_alone(ckpt, tmp_path):
    out = tmp_path / "out"

    def meddle(stage, done, total):
        if stage == "gguf/write" and done == 1:
            out.mkdir()
            (out / "notes.txt").write_text("mine")

    with pytest.raises(OutputExistsError, match="already exists"):
        _convert(ckpt, out, progress=meddle)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert leftovers(out) == ["out"]


@pytest.mark.system
def test_two_conversions_to_one_output_exactly_one_wins(ckpt, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "edgekit.cli", "convert", str(ckpt), "--quant", "int4", "-o", str(out),
            "--json"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), json.loads(p.stdout.read())) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1]
    loser = next(data for rc, data in results if rc == 1)
    assert loser["error"] == "OutputExistsError"
    assert "another conversion" in loser["message"] or "already exists" in loser["message"]
    edgekit.read_manifest(out)  # the winner's artifact is whole
    assert leftovers(out) == ["out"]


def test_conversion_to_an_output_another_one_holds_fails_at_once(ckpt, tmp_path):
    from edgekit.artifact import output_lock

    out = tmp_path / "out"
    with output_lock(out):  # as a conversion running in another process holds it
        p = _process("convert", str(ckpt), "-o", str(out))  # the lock is held by this process
    assert f"another conversion (pid {os.getpid()}) is writing this output" in _one_line(p)
    assert leftovers(out) == []


@pytest.mark.system
def test_sigterm_before_writing_names_the_stage(ckpt, tmp_path):
    """Signals are honoured from the first step: here while the chat template is checked."""
    tc = json.loads((ckpt / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tc))
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "convert", str(ckpt),
                             "-o", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # well inside the template check's 5 s limit
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM while checking the chat template" in err and "Traceback" not in err
    assert leftovers(tmp_path / "o") == []


def test_output_under_a_file_is_one_line(ckpt, tmp_path):
    (tmp_path / "afile").write_text("x")
    p = _cli("convert", str(ckpt), "-o", str(tmp_path / "afile" / "out"))
    assert "could not write" in _one_line(p)


@pytest.mark.system
def test_sigkill_leftovers_removed_by_the_next_conversion(ckpt, tmp_path):
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import os, signal, edgekit
        def die(stage, done, total):
            if stage == "gguf/write" and done == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        edgekit.convert({str(ckpt)!r}, to="gguf", quant="fp16", output={str(out)!r}, progress=die)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert p.returncode == -signal.SIGKILL
    stale = [n for n in leftovers(out) if ".partial-" in n]
    assert len(stale) == 1  # what SIGKILL leaves: nothing can run on the way out
    _convert(ckpt, out)
    assert leftovers(out) == ["out"]


# ---- native aborts -----------------------------------------------------------------------------

def test_duplicate_token_refused_before_anything_is_written(ckpt, tmp_path):
    """The last merge's token becomes an added token with id 300's text: Hugging Face loads that;
    llama.cpp cannot load a vocabulary with one text twice."""
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    last = max(by_id)  # the last merge's result: no other merge uses it
    del tj["model"]["vocab"][by_id[last]]
    tj["model"]["merges"] = [m for m in tj["model"]["merges"]
                             if by_id[last] != ("".join(m) if isinstance(m, list) else m.replace(" ", ""))]
    tj["added_tokens"].append({"id": last, "content": by_id[300], "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": False})
    (ckpt / "tokenizer.json").write_text(json.dumps(tj))
    from tokenizers import Tokenizer

    Tokenizer.from_file(str(ckpt / "tokenizer.json"))  # the tokenizers library takes it
    p = _cli("convert", str(ckpt), "-o", str(tmp_path / "out"))
    line = _one_line(p)
    assert f"tokens 300 and {last} are both" in line and "tokenizer.json" in line
    assert leftovers(tmp_path / "out") == []


def _probe_load(artifact: Path) -> subprocess.CompletedProcess:
    """edgekit.load in a child: a native abort would show as a negative return code."""
    code = ("import sys, edgekit\ntry:\n    edgekit.load(sys.argv[1]).close()\n    print('loaded')\n"
            "except edgekit.EdgekitError as e:\n    print(type(e).__name__ + ': ' + str(e))\n")
    return subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True,
                          timeout=300)


def _tamper_gguf(artifact: Path, edit) -> None:
    """Rewrite the artifact's GGUF with `edit(tokens) -> tokens` and re-hash it in the manifest, as an
    attacker (or another tool) could: the hashes match, only the content is hostile."""
    import gguf

    manifest = json.loads((artifact / MANIFEST).read_text())
    path = artifact / manifest["model_file"]
    reader = gguf.GGUFReader(path)
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]).decode()
              for i in reader.fields["tokenizer.ggml.tokens"].data]
    new_tokens, rows = edit(tokens)
    out = path.with_suffix(".new")
    w = gguf.GGUFWriter(out, "qwen2")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "tokenizer.ggml.tokens",
                                                            "tokenizer.ggml.token_type",
                                                            "tokenizer.ggml.merges"):
            continue
        value = field.contents()
        if isinstance(value, list):
            continue
        w.add_key_value(field.name, value, field.types[0])
    w.add_token_list(new_tokens)
    w.add_token_types([1] * len(new_tokens))
    for t in reader.tensors:
        data = np.array(t.data)
        if t.name == "token_embd.weight":
            data = np.resize(data, (rows, data.shape[1]))
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out.replace(path)
    for entry in manifest["files"]:
        if entry["name"] == manifest["model_file"]:
            entry["size"], entry["sha256"] = path.stat().st_size, sha256_file(path)
    (artifact / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def fp32_gguf(ckpt, tmp_path) -> Path:
    return _convert(ckpt, tmp_path / "art", quant="fp32").path


def test_gguf_with_duplicate_tokens_refused_not_aborted(fp32_gguf):
    _tamper_gguf(fp32_gguf, lambda toks: ([*toks[:-1], toks[5]], len(toks)))
    p = _probe_load(fp32_gguf)
    assert p.returncode == 0, p.stderr  # no SIGABRT: llama.cpp never saw the file
    assert p.stdout.startswith("ArtifactError") and "twice" in p.stdout
    assert "twice" in _one_line(_cli("info", str(fp32_gguf)))


def test_gguf_vocab_and_embedding_disagree_refused(fp32_gguf):
    _tamper_gguf(fp32_gguf, lambda toks: (toks, len(toks) + 16))
    p = _probe_load(fp32_gguf)
    assert p.returncode == 0 and "rows but the vocabulary has" in p.stdout, (p.stdout, p.stderr)


def test_config_vocab_disagreeing_with_embedding_refused_at_convert(ckpt, tmp_path):
    _write_config(ckpt, vocab_size=json.loads((ckpt / "config.json").read_text())["vocab_size"] + 7)
    with pytest.raises(CheckpointFormatError, match="embed_tokens.weight' has shape"):
        _convert(ckpt, tmp_path / "out")


# ---- hangs and unbounded memory -----------------------------------------------------------------

def test_absurd_vocab_size_refused_fast(ckpt, tmp_path):
    _write_config(ckpt, vocab_size=10**12)
    start = time.perf_counter()
    p = _cli("convert", str(ckpt), "-o", str(tmp_path / "out"))
    assert "vocab_size" in _one_line(p)
    assert time.perf_counter() - start < 60


def test_hanging_chat_template_refused_at_convert(ckpt, tmp_path, monkeypatch):
    from edgekit.runtimes import chat_template

    monkeypatch.setattr(chat_template, "DEFAULT_TIMEOUT_S", 1.0)  # 5 s in use: the same path, sooner
    tc = json.loads((ckpt / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tc))
    start = time.perf_counter()
    with pytest.raises(ConversionError, match="chat template"):
        _convert(ckpt, tmp_path / "out")
    assert time.perf_counter() - start < 60
    assert leftovers(tmp_path / "out") == []


# ---- signals ------------------------------------------------------------------------------------

def _cmdline(proc) -> list[str]:
    import psutil

    try:
        return proc.cmdline()
    except psutil.Error:  # ended meanwhile (e.g. the chat-template checker)
        return []


@pytest.mark.system
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_llama_cpp_quantize(ckpt, tmp_path, sig, code):
    """The quantizer runs in a child process: the signal is honoured at once, not after it."""
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "convert", str(ckpt), "--quant", "Q4_0",
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        kids = [c for c in parent.children() if "llama_quantize" in " ".join(_cmdline(c))]
        if kids:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    else:
        pytest.fail("the quantizer child never started")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "quantizing (llama.cpp)" in err and "nothing was written" in err and "Traceback" not in err
    assert leftovers(out) == []
    alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(k.status(), k.ppid(), _cmdline(k)) for k in alive]


@pytest.mark.system
def test_sigterm_while_writing_tensors(ckpt, tmp_path):
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import os, signal, sys, edgekit
        def term(stage, done, total):
            if stage == "gguf/write" and done == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        try:
            edgekit.convert({str(ckpt)!r}, to="gguf", quant="fp16", output={str(out)!r}, progress=term)
        except edgekit.Interrupted as e:
            print(e); sys.exit(e.exit_code)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 143, p.stderr
    assert "SIGTERM while writing tensors (gguf)" in p.stdout
    assert leftovers(out) == []


# ---- integrity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_file", ["../outside.gguf", "/etc/hostname", "unlisted.gguf"])
def test_model_file_must_be_a_hashed_member(fp32_gguf, model_file):
    shutil.copyfile(next(fp32_gguf.glob("*.gguf")), fp32_gguf / "unlisted.gguf")
    shutil.copyfile(next(fp32_gguf.glob("*.gguf")), fp32_gguf.parent / "outside.gguf")
    manifest = json.loads((fp32_gguf / MANIFEST).read_text())
    manifest["model_file"] = model_file
    (fp32_gguf / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnsafePathError, match="not one of the artifact's hashed files"):
        edgekit.load(fp32_gguf)
    p = _cli("info", str(fp32_gguf))
    assert "hashed files" in _one_line(p)


# ---- silent acceptance -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_refused(ckpt, tmp_path, value):
    name = "model.layers.1.mlp.up_proj.weight"

    def poison(w):
        w = w.copy()
        w[3, 5] = value
        return w

    _rewrite_tensor(ckpt, name, poison)
    with pytest.raises(CheckpointFormatError, match=f"tensor '{name}' holds 1 NaN or infinite"):
        _convert(ckpt, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_non_finite_weights_refused_on_the_onnx_path_too(ckpt, tmp_path):
    _rewrite_tensor(ckpt, "model.norm.weight", lambda w: np.full_like(w, np.nan))
    with pytest.raises(CheckpointFormatError, match="model.norm.weight"):
        _convert(ckpt, tmp_path / "out", to="onnx", quant="int8")


def test_overlapping_offsets_refused(ckpt, tmp_path):
    import struct

    data = (ckpt / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    second = names[1]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    header[second]["data_offsets"] = [0, size]  # alias the first tensor's bytes
    blob = json.dumps(header).encode()
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
    with pytest.raises(CheckpointFormatError, match="tensor '.*' starts at data byte 0, which overlaps '.*'"):
        _convert(ckpt, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_config_shape_mismatch_refused(ckpt, tmp_path):
    _write_config(ckpt, intermediate_size=96)
    with pytest.raises(CheckpointFormatError,
                       match=r"_proj.weight' has shape \[(128, 64|64, 128)\], but .* \[(96, 64|64, 96)\]"):
        _convert(ckpt, tmp_path / "out", to="onnx")


# ---- one line, not a traceback -----------------------------------------------------------------

@pytest.mark.parametrize("change,word", [({"hidden_size": "64"}, "hidden_size"),
                                         ({"num_attention_heads": 0}, "num_attention_heads"),
                                         ({"rms_norm_eps": "tiny"}, "rms_norm_eps"),
                                         ({"num_hidden_layers": 7}, "layer 2 has no")])
def test_bad_config_values_one_line(ckpt, tmp_path, change, word):
    _write_config(ckpt, **change)
    assert word in _one_line(_cli("convert", str(ckpt), "-o", str(tmp_path / "out")))


def test_disk_full_is_a_conversion_error(ckpt, tmp_path, monkeypatch):
    import gguf

    def full(self, tensor, *a, **kw):
        raise OSError(28, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    with pytest.raises(ConversionError, match="no space left on the device"):
        _convert(ckpt, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_unreadable_artifact_file_is_one_line(fp32_gguf):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    target = next(fp32_gguf.glob("*.gguf"))
    target.chmod(0)
    try:
        with pytest.raises(ArtifactError, match="cannot read"):
            edgekit.read_manifest(fp32_gguf)
    finally:
        target.chmod(0o644)


def test_tokenizer_errors_are_typed(ckpt, tmp_path):
    (ckpt / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": "zero"}}}')
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        _convert(ckpt, tmp_path / "out")


def test_quantizer_failure_or_crash_is_a_conversion_error(tmp_path):
    """llama.cpp's quantizer runs in a child: a bad input fails (or aborts) there, not here."""
    from edgekit.converters.llama_quantize import quantize

    src = tmp_path / "bad.gguf"
    src.write_bytes(b"GGUF" + bytes(200))
    with pytest.raises(ConversionError,
                       match=r"bad.gguf: llama.cpp's quantizer (failed with code|was killed by)"):
        quantize(src, tmp_path / "out.gguf", 15)
    assert not (tmp_path / "out.gguf").exists()

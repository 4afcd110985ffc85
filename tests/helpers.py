"""Reference computations shared by tests: transformers logits, llama.cpp logits, KL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def hf_tokenizer(checkpoint: Path):
    """The tokenizer class the checkpoint declares (AutoTokenizer re-maps some, e.g. for mistral)."""
    import json

    import transformers

    config = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    name = str(config.get("tokenizer_class"))
    # the fast (tokenizers-backed) class: what transformers runs by default, and what llama.cpp mirrors
    cls = (getattr(transformers, name if name.endswith("Fast") else name + "Fast", None)
           or getattr(transformers, name, None) or transformers.AutoTokenizer)
    return cls.from_pretrained(checkpoint)


# ---- transformers, loaded once per checkpoint ---------------------------------------------------
# A checkpoint is known by its folder and each file's name, size and modification time, so a test
# that damages or edits a copy gets a fresh model. The least recently used leave past _KEEP.
_MODELS: dict[tuple, tuple] = {}
_OUTPUTS: dict[tuple, object] = {}
_KEEP = 12


def checkpoint_key(checkpoint: Path) -> tuple:
    root = Path(checkpoint).resolve()
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file())
    return (str(root), tuple(files))


def hf_model(checkpoint: Path, task: str = "text-generation") -> tuple:
    """(tokenizer, model) as edgekit's transformers reference loads them (fp32, eager attention:
    the SDPA path of transformers 4.x skips Gemma-2's attention logit softcapping), shared."""
    from edgekit.quality import fidelity

    key = (checkpoint_key(checkpoint), task)
    if key in _MODELS:
        _MODELS[key] = _MODELS.pop(key)  # most recently used last
    else:
        reference = fidelity._TransformersReference
        _MODELS[key] = getattr(reference, "original", reference).load(Path(checkpoint), task)
        while len(_MODELS) > _KEEP:
            _MODELS.pop(next(iter(_MODELS)))
    return _MODELS[key]


def memo(key: tuple, compute):
    """compute() once per key (the same model on the same input gives the same output); a copy
    each time, so that a caller changing its result changes no other's."""
    if key not in _OUTPUTS:
        _OUTPUTS[key] = compute()
    value = _OUTPUTS[key]
    return value.copy() if isinstance(value, np.ndarray | list) else value


def hf_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    def compute():
        import torch

        _, model = hf_model(checkpoint)
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float().numpy()

    return memo(("logits", checkpoint_key(checkpoint), tuple(ids)), compute)


def shared_reference(base: type) -> type:
    """edgekit's transformers reference over the shared models, its outputs computed once each:
    every conversion in the suite is still verified, without loading its source again."""

    class SharedTransformersReference(base):
        original = base

        def __init__(self, checkpoint: Path, task: str, pooling: dict) -> None:
            self._key = (checkpoint_key(checkpoint), task, tuple(sorted(pooling.items())))
            super().__init__(checkpoint, task, pooling)

        @staticmethod
        def load(checkpoint: Path, task: str):
            return hf_model(checkpoint, task)

        def score(self, ids):
            return memo(("score", self._key, tuple(ids)), lambda: base.score(self, ids))

        def greedy(self, ids, n):
            return memo(("greedy", self._key, tuple(ids), n), lambda: base.greedy(self, ids, n))

        def embed(self, texts):
            return memo(("embed", self._key, tuple(texts)), lambda: base.embed(self, texts))

        def close(self) -> None:  # the model stays shared
            pass

    return SharedTransformersReference


def llama_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    # f32 KV cache: the default f16 cache adds its own error, which is not the conversion's
    llm = Llama(model_path=str(gguf_path), n_ctx=max(64, len(ids) + 8), n_batch=512, logits_all=True,
                verbose=False, n_threads=2, type_k=0, type_v=0)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference, relative to the largest reference magnitude."""
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def token_kl(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """KL(ref || ours) of the next-token distributions at each position."""
    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(ours.astype(np.float64))
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def mean_kl(ours: np.ndarray, ref: np.ndarray) -> float:
    """Mean over positions of KL(ref || ours) of the next-token distributions."""
    return float(np.mean(token_kl(ours, ref)))


# general.* keys that only describe the model (names, sizes, licences); everything else must match.
_FUNCTIONAL_GENERAL = {"general.architecture", "general.file_type", "general.quantization_version",
                       "general.alignment"}


def gguf_differences(ours: Path, ref: Path) -> list[str]:
    """Every metadata key (bar cosmetic general.*) and tensor (name, type, shape, bytes) that differs.
    Read with edgekit's own header parser (milliseconds for a 50k-token vocabulary, where gguf-py's
    reader takes seconds), tensor bytes straight from the files."""
    import math
    import mmap

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from edgekit.runtimes.gguf_preflight import read_header

    a, b = read_header(Path(ours)), read_header(Path(ref))

    def kv(header):
        return {k: v for k, v in header.metadata.items()
                if not k.startswith("general.") or k in _FUNCTIONAL_GENERAL}

    ka, kb = kv(a), kv(b)
    diffs = [f"key {k}: only in {'ours' if k in ka else 'reference'}" for k in sorted(set(ka) ^ set(kb))]
    diffs += [f"key {k}: {str(ka[k])[:80]!r} != {str(kb[k])[:80]!r}"
              for k in sorted(set(ka) & set(kb)) if ka[k] != kb[k]]
    ta, tb = a.tensors, b.tensors
    diffs += [f"tensor {n}: only in {'ours' if n in ta else 'reference'}" for n in sorted(set(ta) ^ set(tb))]
    with open(ours, "rb") as fa, open(ref, "rb") as fb, \
            mmap.mmap(fa.fileno(), 0, access=mmap.ACCESS_READ) as ma, \
            mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ) as mb:
        for n in sorted(set(ta) & set(tb)):
            (ne_a, kind_a, off_a), (ne_b, kind_b, off_b) = ta[n], tb[n]
            if kind_a != kind_b or ne_a != ne_b:
                diffs.append(f"tensor {n}: {GGMLQuantizationType(kind_a).name}{list(ne_a)} != "
                             f"{GGMLQuantizationType(kind_b).name}{list(ne_b)}")
                continue
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind_a)]
            size = math.prod(ne_a) // block * nbytes
            start_a, start_b = a.data_start + off_a, b.data_start + off_b
            if ma[start_a:start_a + size] != mb[start_b:start_b + size]:
                diffs.append(f"tensor {n}: data differs")
    return diffs


# ---- llama.cpp's own converter, the reference for our GGUFs --------------------------------------
_BATCH = """
import json, os, sys
root, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path[:0] = [root, os.path.join(root, "gguf-py")]
import convert_hf_to_gguf as converter  # torch and gguf-py once, for every job
failures = {}
for checkpoint, outtype, dest in jobs:
    partial = dest + ".partial"
    sys.argv = ["convert_hf_to_gguf.py", checkpoint, "--outtype", outtype, "--outfile", partial]
    try:
        converter.main()
        os.replace(partial, dest)
    except BaseException as exc:  # SystemExit from its argument checks included
        failures[dest] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failures))
"""


def _content_hash(checkpoint: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(checkpoint).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def reference_convert(jobs: list[tuple[Path, str]]) -> dict[tuple[Path, str], Path]:
    """llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on each (checkpoint,
    outtype): all of them in one process, and each output kept under .cache/reference/ by the
    checkpoint's bytes, the outtype and the converter's own bytes, so a later session reuses it."""
    import hashlib
    import json
    import os
    import subprocess
    import sys

    import pytest

    root = os.environ.get("EDGEKIT_REFERENCE_LLAMA_CPP")
    if not root:
        pytest.skip("EDGEKIT_REFERENCE_LLAMA_CPP not set "
                    "(scripts/test.sh sets it from scripts/fetch-reference.sh)")
    script = Path(root) / "convert_hf_to_gguf.py"
    version = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    cache = Path(root).parent / "outputs"
    cache.mkdir(parents=True, exist_ok=True)
    found, todo = {}, []
    for checkpoint, outtype in jobs:
        key = hashlib.sha256(f"{version}|{outtype}|{_content_hash(checkpoint)}".encode()).hexdigest()[:32]
        dest = cache / f"{key}.gguf"
        found[(checkpoint, outtype)] = dest
        if not dest.is_file():
            todo.append([str(checkpoint), outtype, str(dest)])
    if todo:
        env = {**os.environ, "PYTHONPATH": str(Path(root) / "gguf-py")}
        proc = subprocess.run([sys.executable, "-c", _BATCH, root, json.dumps(todo)], env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        failures = json.loads(proc.stdout.strip().splitlines()[-1])
        assert failures == {}, failures
    return found


def onnx_logits(model_path: Path, ids: list[int], prompt: int | None = None) -> np.ndarray:
    """Logits from an ONNX decoder (ours or optimum's): the whole sequence in one pass (prompt=None), or the
    first `prompt` tokens in one pass and the rest one token at a time through the KV cache."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    kv = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    kv_type = np.float16 if "float16" in kv[0].type else np.float32
    heads, head_dim = kv[0].shape[1], kv[0].shape[3]
    outputs = [o.name for o in sess.get_outputs()]
    past = {i.name: np.zeros((1, heads, 0, head_dim), kv_type) for i in kv}
    chunks = [ids] if prompt is None else [ids[:prompt]] + [[t] for t in ids[prompt:]]
    names = {i.name for i in sess.get_inputs()}
    positions = "position_ids" in names  # optimum's exports may take them
    done, logits = 0, []
    for chunk in chunks:
        done += len(chunk)
        feeds = {"input_ids": np.array([chunk], np.int64), "attention_mask": np.ones((1, done), np.int64),
                 **past}
        if positions:
            feeds["position_ids"] = np.arange(done - len(chunk), done, dtype=np.int64)[None]
        if "logits_to_keep" in names:  # every row: our graphs compute only the last ones asked for
            feeds["logits_to_keep"] = np.array([len(chunk)], np.int64)
        result = dict(zip(outputs, sess.run(outputs, feeds), strict=True))
        logits.append(result["logits"][0])
        past = {n.replace("present.", "past_key_values."): v
                for n, v in result.items() if n.startswith("present.")}
    return np.concatenate(logits).astype(np.float32)


def leftovers(out: Path) -> list[str]:
    """What a conversion to `out` left in its folder: the output itself and any hidden sibling of it."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}") or p == out)


def slow_tokens_env(folder: Path, seconds: float) -> dict[str, str]:
    """Environment for child processes whose llama.cpp backend takes `seconds` more per generated
    token (a sitecustomize on PYTHONPATH): a backend of known delays, for Ctrl-C and latency tests."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import time\n"
        "from edgekit.runtimes import llamacpp\n"
        "_real = llamacpp.LlamaCppBackend.generate\n"
        "def _slow(self, ids, options):\n"
        "    for event in _real(self, ids, options):\n"
        f"        time.sleep({seconds})\n"
        "        yield event\n"
        "llamacpp.LlamaCppBackend.generate = _slow\n")
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`edgekit ARGS` run in this process through typer's CliRunner: the real command without a cold
    interpreter start (and without importing torch again for each one). A crash is rendered as its
    traceback on stderr, as a real process would print it, so "no Traceback" checks still hold.
    The tests of exit codes by signal, ttys and native aborts keep real processes."""
    import os
    import traceback

    from typer.testing import CliRunner

    from edgekit.cli import app

    here = os.getcwd()  # contextlib.chdir is Python 3.11+; edgekit supports 3.10
    try:
        if cwd:
            os.chdir(cwd)
        result = CliRunner().invoke(app, list(args), input=input, env=env, prog_name="edgekit")
    finally:
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["edgekit", *args], result.exit_code, result.stdout, stderr)

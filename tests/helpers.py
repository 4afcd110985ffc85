"""Reference computations shared by tests: transformers logits, llama.cpp logits, KL."""

from __future__ import annotations

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


def hf_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    import torch
    import transformers

    # eager attention: the SDPA path of transformers 4.x skips Gemma-2's attention logit softcapping
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32,
                                                              attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out.logits[0].float().numpy()


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
    """Every metadata key (bar cosmetic general.*) and tensor (name, type, shape, bytes) that differs."""
    import gguf

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(ref)

    def kv(reader):
        return {k: f.contents() for k, f in reader.fields.items()
                if not k.startswith("GGUF.") and (not k.startswith("general.") or k in _FUNCTIONAL_GENERAL)}

    ka, kb = kv(a), kv(b)
    diffs = [f"key {k}: only in {'ours' if k in ka else 'reference'}" for k in sorted(set(ka) ^ set(kb))]
    diffs += [f"key {k}: {str(ka[k])[:80]!r} != {str(kb[k])[:80]!r}"
              for k in sorted(set(ka) & set(kb)) if ka[k] != kb[k]]
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    diffs += [f"tensor {n}: only in {'ours' if n in ta else 'reference'}" for n in sorted(set(ta) ^ set(tb))]
    for n in sorted(set(ta) & set(tb)):
        x, y = ta[n], tb[n]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            diffs.append(f"tensor {n}: {x.tensor_type.name}{list(x.shape)} != "
                         f"{y.tensor_type.name}{list(y.shape)}")
        elif not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            diffs.append(f"tensor {n}: data differs")
    return diffs


def reference_convert(checkpoint: Path, outtype: str, out: Path) -> Path:
    """Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on a checkpoint."""
    import os
    import subprocess
    import sys

    import pytest

    root = os.environ.get("EDGEKIT_REFERENCE_LLAMA_CPP")
    if not root:
        pytest.skip("EDGEKIT_REFERENCE_LLAMA_CPP not set "
                    "(scripts/test.sh sets it from scripts/fetch-reference.sh)")
    env = {**os.environ, "PYTHONPATH": str(Path(root) / "gguf-py")}
    proc = subprocess.run([sys.executable, str(Path(root) / "convert_hf_to_gguf.py"), str(checkpoint),
                           "--outtype", outtype, "--outfile", str(out)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


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
    positions = any(i.name == "position_ids" for i in sess.get_inputs())  # optimum's exports may take them
    done, logits = 0, []
    for chunk in chunks:
        done += len(chunk)
        feeds = {"input_ids": np.array([chunk], np.int64), "attention_mask": np.ones((1, done), np.int64),
                 **past}
        if positions:
            feeds["position_ids"] = np.arange(done - len(chunk), done, dtype=np.int64)[None]
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

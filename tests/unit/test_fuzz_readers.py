"""Property-based fuzzing (hypothesis) of every reader that sees user input: safetensors headers,
config.json, tokenizer.json, edgekit.json, GGUF headers, ONNX metadata (before native code), the
server's request bodies, and the Markdown, HTML and DOCX documents summaries read.

Each target takes raw bytes (mutations of a valid seed file, or random bytes) and must either
accept the file or raise an EdgekitError: any other exception is a bug, and a crash would take
pytest down with it. CI runs a bounded number of inputs; `python scripts/fuzz.py --seconds N`
runs longer and prints how many inputs each reader saw.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.errors import EdgekitError

EXAMPLES = int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "150"))
_DIR = Path(tempfile.mkdtemp(prefix="edgekit-fuzz-"))
atexit.register(shutil.rmtree, _DIR, True)


# ---- seeds: small valid files of each kind ------------------------------------------------------

def seed_safetensors() -> bytes:
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                         "b.bias": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]}}).encode()
    return struct.pack("<Q", len(header)) + header + np.arange(4, dtype="<f4").tobytes() + bytes(4)


def seed_config() -> bytes:
    return json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                       "vocab_size": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}).encode()


def seed_tokenizer() -> bytes:
    return json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3},
                                 "merges": ["a b"]},
                       "added_tokens": [{"id": 3, "content": "<s>", "special": True}],
                       "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}).encode()


def seed_manifest() -> bytes:
    import hashlib

    model = _gguf_bytes()
    return json.dumps({"schema_version": 1, "format": "gguf", "model_file": "m.gguf", "files": [
        {"name": "m.gguf", "size": len(model), "sha256": hashlib.sha256(model).hexdigest()}]}).encode()


def seed_gguf() -> bytes:
    return _gguf_bytes()


@functools.lru_cache(maxsize=1)
def _gguf_bytes() -> bytes:
    import gguf

    path = _DIR / "seed.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_token_list(["a", "b", "c", "d"])
    w.add_token_types([1, 1, 1, 3])
    w.add_eos_token_id(3)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def seed_onnx() -> bytes:
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    weight.external_data.add(key="location", value="model.onnx.data")
    weight.external_data.add(key="offset", value="0")
    weight.external_data.add(key="length", value="16")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    return helper.make_model(graph).SerializeToString()


def seed_request() -> bytes:
    user = {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    return json.dumps({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, user],
                       "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "stop": ["."], "seed": 3,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()


def seed_markdown() -> bytes:
    return b"# Title\n\nSome *emphasis* and **strong** text, `code` and a [link](http://x).\n\n- item\n"


def seed_html() -> bytes:
    return (b"<!doctype html><html><head><title>T</title><script>x()</script></head><body><h1>Head</h1>"
            b"<p>One <b>bold</b> paragraph.</p><div><p>Two &amp; more</p></div></body></html>")


def seed_docx() -> bytes:
    import io

    import docx

    document = docx.Document()
    document.add_heading("Title", level=1)
    document.add_paragraph("A paragraph of text.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


# ---- targets: bytes in, accepted or EdgekitError out ---------------------------------------------

def _write(name: str, data: bytes) -> Path:
    d = Path(tempfile.mkdtemp(dir=_DIR))
    (d / name).write_bytes(data)
    return d


def target_safetensors(data: bytes) -> None:
    from edgekit.converters.safetensors_io import read_index

    for ref in read_index(_write("model.safetensors", data) / "model.safetensors").values():
        ref.load()


def target_config(data: bytes) -> None:
    from edgekit.converters.source import _read_json
    from edgekit.converters.validate import check_config, check_tensors

    d = _write("config.json", data)
    config = _read_json(d / "config.json", required=True)
    check_config(d / "config.json", config)
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else "LlamaForCausalLM"
    check_tensors(d, config, arch,
                  {name: (shape, d / "model.safetensors") for name, shape in _SEED_SHAPES.items()})


_SEED_SHAPES = {  # the tensors seed_config describes
    "model.embed_tokens.weight": (4, 8), "model.norm.weight": (8,),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.self_attn.k_proj.weight": (4, 8), "model.layers.0.self_attn.v_proj.weight": (4, 8),
    "model.layers.0.self_attn.o_proj.weight": (8, 8), "model.layers.0.mlp.gate_proj.weight": (16, 8),
    "model.layers.0.mlp.up_proj.weight": (16, 8), "model.layers.0.mlp.down_proj.weight": (8, 16),
}


def target_tokenizer(data: bytes) -> None:
    from edgekit.converters.gguf_vocab import read_vocab
    from edgekit.converters.validate import check_tokenizer

    d = _write("tokenizer.json", data)
    check_tokenizer(d, {"vocab_size": 8}, "LlamaForCausalLM")
    read_vocab("bpe", d, {"vocab_size": 8})


def target_manifest(data: bytes) -> None:
    from edgekit.artifact import read_manifest

    d = _write("edgekit.json", data)
    (d / "m.gguf").write_bytes(_gguf_bytes())
    read_manifest(d)


def target_gguf(data: bytes) -> None:
    from edgekit.runtimes.gguf_preflight import preflight

    preflight(_write("m.gguf", data) / "m.gguf")


def target_onnx(data: bytes) -> None:
    from edgekit.runtimes.onnx_preflight import check_external_data

    d = _write("model.onnx", data)
    (d / "model.onnx.data").write_bytes(bytes(16))
    check_external_data(d, "model.onnx", {"model.onnx", "model.onnx.data"})


def target_request(data: bytes) -> None:
    """What the server does with a body before any engine: a 4xx ApiError is its refusal."""
    from edgekit.server import wire

    try:
        body = wire.parse_body(data)
        wire.chat_messages(body)
        wire.generation_options(body, {})
        wire.streaming(body)
    except wire.ApiError as exc:
        if not 400 <= exc.status < 500:
            raise
        raise EdgekitError(exc.message) from None


def _document(suffix: str) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        from edgekit.summaries.documents import read_document

        read_document(_write(f"doc{suffix}", data) / f"doc{suffix}")

    return target


TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], bytes]]] = {
    "safetensors header": (target_safetensors, seed_safetensors),
    "config.json": (target_config, seed_config),
    "tokenizer.json": (target_tokenizer, seed_tokenizer),
    "edgekit.json manifest": (target_manifest, seed_manifest),
    "GGUF header": (target_gguf, seed_gguf),
    "ONNX metadata": (target_onnx, seed_onnx),
    "request body": (target_request, seed_request),
    "Markdown document": (_document(".md"), seed_markdown),
    "HTML document": (_document(".html"), seed_html),
    "DOCX document": (_document(".docx"), seed_docx),
}


# ---- inputs: the seed mutated (flips, cuts, splices, JSON edits) or plain random bytes ----------

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
                     | st.text(max_size=20),
                     lambda inner: (st.lists(inner, max_size=5)
                                    | st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                     max_leaves=20)


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    kind = draw(st.sampled_from(["flip", "cut", "splice", "json", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "json" and seed[:1] == b"{":
        doc = json.loads(seed)
        path_keys = draw(st.lists(st.sampled_from(sorted(_keys(doc))), min_size=1, max_size=3))
        for key in path_keys:
            _set(doc, key, draw(_JSON))
        return json.dumps(doc).encode()
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(max_size=64)) + data[at:])
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if data:
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


def _keys(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield "/".join((*prefix, k))
            yield from _keys(v, (*prefix, k))


def _set(doc, path: str, value) -> None:
    parts = path.split("/")
    for p in parts[:-1]:
        doc = doc.get(p) if isinstance(doc, dict) else None
        if not isinstance(doc, dict):
            return
    doc[parts[-1]] = value


def run_one(name: str, data: bytes) -> str:
    """'accepted' or 'refused'; anything but an EdgekitError propagates (a bug)."""
    target, _ = TARGETS[name]
    try:
        target(data)
    except EdgekitError:
        return "refused"
    return "accepted"


@pytest.mark.parametrize("name", list(TARGETS))
def test_reader_survives_fuzzing(name):
    seed = TARGETS[name][1]()
    assert run_one(name, seed) in ("accepted", "refused")
    seen = {"accepted": 0, "refused": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(seed))
    def check(data):
        seen[run_one(name, data)] += 1

    check()
    assert sum(seen.values()) >= min(EXAMPLES, 50)
    assert seen["refused"] > 0  # the mutations do reach the checks


def test_valid_seeds_are_accepted():
    for name in ("safetensors header", "config.json", "edgekit.json manifest", "GGUF header",
                 "ONNX metadata", "request body", "Markdown document", "HTML document", "DOCX document"):
        assert run_one(name, TARGETS[name][1]()) == "accepted", name

"""Hugging Face checkpoint -> GGUF, written tensor by tensor.

Float and Q8_0 files are written directly (gguf-py's numpy quantizers, the same arithmetic
llama.cpp's convert_hf_to_gguf.py uses). Every other llama.cpp type (Q4_K_M, Q4_0, ...) is made by
llama.cpp's own quantizer from an intermediate file at the source's precision, which is deleted
afterwards, on failure too.

Memory: tensors are planned from headers only, then read from the memory-mapped safetensors, one
at a time, quantized in row chunks into the output buffer and written; peak stays near one tensor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgekit.errors import CheckpointFormatError, ConversionError, UnsupportedArchitectureError
from edgekit.progress import Progress

from .gguf_arch import ARCHITECTURES, ArchSpec
from .gguf_vocab import read_vocab
from .rope import (
    base_frequencies,
    llama3_divisors,
    local_rope_theta,
    longrope_attention_factor,
    rope_parameters,
)
from .source import Checkpoint

QT = gguf.GGMLQuantizationType
# Tensors llama.cpp keeps in float32 whatever the file type (matches its converter and quantizer).
_ALWAYS_F32 = (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES, gguf.MODEL_TENSOR.FFN_GATE_INP)
_SKIP_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
_ROWS_PER_CHUNK = 4096


@dataclass
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows last dim = contiguous)
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        if self.qtype == QT.F32:
            return int(np.prod(self.shape)) * 4
        if self.qtype in (QT.F16, QT.BF16):
            return int(np.prod(self.shape)) * 2
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape)) // block * size


def spec_for(ckpt: Checkpoint) -> ArchSpec:
    spec = ARCHITECTURES.get(ckpt.architecture)
    if spec is None:
        raise UnsupportedArchitectureError(str(ckpt.path / "config.json"), ckpt.architecture,
                                           list(ARCHITECTURES))
    return spec


def _cfg(config: dict[str, Any], *names: str, required: bool = True) -> Any:
    for n in names:
        if config.get(n) is not None:
            return config[n]
    if required:
        raise CheckpointFormatError(f"config.json: missing '{names[0]}'")
    return None


def _write_hparams(w: gguf.GGUFWriter, spec: ArchSpec, config: dict[str, Any], n_vocab: int) -> None:
    w.add_block_count(_cfg(config, "num_hidden_layers", "n_layer"))
    if (n_ctx := _cfg(config, "max_position_embeddings", "n_positions", required=False)) is not None:
        w.add_context_length(n_ctx)
    w.add_embedding_length(_cfg(config, "hidden_size", "n_embd"))
    w.add_feed_forward_length(_cfg(config, "intermediate_size", "n_inner"))
    n_head = _cfg(config, "num_attention_heads", "n_head")
    w.add_head_count(n_head)
    if (n_kv := config.get("num_key_value_heads")) is not None:
        w.add_head_count_kv(n_kv)
    if spec.task == "feature-extraction":
        w.add_causal_attention(False)
    rope = rope_parameters(config)
    rope_type, factor = rope.get("rope_type"), rope.get("factor")
    if rope_type == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    theta = rope.get("rope_theta", spec.rope_base_default)
    if theta is not None and spec.task == "text-generation" and spec.rope_base_key:
        w.add_rope_freq_base(theta)
    if (local_theta := local_rope_theta(config)) is not None:
        w.add_rope_freq_base_swa(local_theta)
    if (eps := config.get("rms_norm_eps")) is not None:
        w.add_layer_norm_rms_eps(eps)
    if (eps := config.get("layer_norm_eps")) is not None:
        w.add_layer_norm_eps(eps)
    head_dim = config.get("head_dim")
    if head_dim is None and spec.head_dim_default:
        head_dim = config["hidden_size"] // n_head
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if spec.vocab_size_key:
        w.add_vocab_size(config.get("vocab_size", n_vocab))
    if spec.rope_dim_key:
        # partial rotary (Phi-4-mini) turns only a share of each head, counted as llama.cpp does
        share = float(config.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1)
        w.add_rope_dimension_count(int(share * config["hidden_size"]) // n_head if share != 1
                                   else head_dim or config["hidden_size"] // n_head)
    for method, key, default in spec.keys:
        value = config.get(key, default)
        if value is None and method in spec.zero_keys:
            value = 0
        if value or (value == 0 and method in spec.zero_keys):  # else absent, null or 0: llama.cpp's default
            getattr(w, method)(value)
    if spec.longrope and (factor := longrope_attention_factor(config)) is not None:
        w.add_rope_scaling_attn_factors(factor)


def _pooling_type(ckpt: Checkpoint) -> gguf.PoolingType | None:
    """sentence-transformers pooling (1_Pooling/config.json) for encoders."""
    modules = ckpt.path / "modules.json"
    pooling = ckpt.json_file("1_Pooling/config.json") if modules.is_file() else None
    if pooling is None:
        return None
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    raise ConversionError(f"{ckpt.path / '1_Pooling/config.json'}: pooling mode not supported by llama.cpp")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF keeps rotary halves per head as [first half; second half]; llama.cpp wants them interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(config: dict[str, Any]) -> np.ndarray | None:
    """Llama 3.1+ frequency-dependent rope scaling, stored as the rope_freqs tensor (float32 maths,
    as llama.cpp's converter does)."""
    rope = rope_parameters(config)
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return llama3_divisors(rope, base_frequencies(rope.get("rope_theta", 10000.0), dim, np.float32))


def _target_type(name: str, ndim: int, base: gguf.GGMLQuantizationType, always_f32: set[str],
                 row: int) -> gguf.GGMLQuantizationType:
    if ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or name in always_f32:
        return QT.F32
    if base in (QT.F32, QT.F16, QT.BF16):
        return base
    block = gguf.GGML_QUANT_SIZES[base][0]
    return base if row % block == 0 else QT.F16  # llama.cpp's converter falls back to F16 too


def plan_tensors(ckpt: Checkpoint, spec: ArchSpec, base: gguf.GGMLQuantizationType,
                 n_vocab: int) -> list[PlannedTensor]:
    config = ckpt.config
    trim_rows = n_vocab if spec.trim_embeddings else None
    n_blocks = _cfg(config, "num_hidden_layers")
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    tmap = gguf.get_tensor_name_map(arch, n_blocks)
    always_f32 = {gguf.TENSOR_NAMES[k].format(bid=b) + ".weight"
                  for k in _ALWAYS_F32 for b in range(n_blocks)}
    n_head = config.get("num_attention_heads")
    n_kv = config.get("num_key_value_heads", n_head)
    planned: list[PlannedTensor] = []
    factors = _llama3_rope_factors(config) if spec.gguf_arch == "llama" else None
    if factors is not None:
        planned.append(PlannedTensor("rope_freqs.weight", factors.shape, QT.F32, lambda f=factors: f))
    rope = rope_parameters(config)
    if spec.longrope and rope.get("long_factor"):
        for kind in ("long", "short"):
            values = np.asarray(rope[f"{kind}_factor"], dtype=np.float32)
            planned.append(PlannedTensor(f"rope_factors_{kind}.weight", values.shape, QT.F32,
                                         lambda v=values: v))
    for hf_name, ref in ckpt.tensors.items():
        name = hf_name
        for old, new in spec.rename:
            if name.startswith(old) and old.endswith("."):
                name = new + name[len(old):]
            elif name.endswith(old) and old.startswith("."):
                name = name[: -len(old)] + new
        if name.endswith(_SKIP_SUFFIXES) or name in spec.skip_names or name.startswith(spec.skip_prefixes):
            continue
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ConversionError(
                f"{ref.file}: tensor '{hf_name}' has no place in llama.cpp's {spec.gguf_arch} layout; "
                "the checkpoint does not match its declared architecture"
            )
        transform: Callable[[np.ndarray], np.ndarray] | None = None
        if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            transform = lambda w, h=n_head: _permute(w, h)  # noqa: E731
        elif spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            transform = lambda w, h=n_kv: _permute(w, h)  # noqa: E731
        elif spec.norm_offset and name.endswith("norm.weight"):
            transform = lambda w, o=spec.norm_offset: w + np.asarray(o, dtype=w.dtype)  # noqa: E731
        elif trim_rows is not None and gname == "token_embd.weight":
            transform = lambda w, n=trim_rows: w[:n]  # noqa: E731
        shape = ref.shape
        if trim_rows is not None and gname == "token_embd.weight":
            shape = (min(trim_rows, shape[0]), *shape[1:])
        qtype = _target_type(gname, len(shape), base, always_f32, shape[-1] if shape else 1)
        planned.append(PlannedTensor(gname, shape, qtype, _loader(ref.load, transform)))
    names = Counter(t.name for t in planned)
    if dup := [n for n, c in names.items() if c > 1]:
        raise ConversionError(f"{ckpt.path}: several checkpoint tensors map to {dup[0]}")
    return planned


def _loader(load: Callable[[], np.ndarray], transform: Callable | None) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        data = load()
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        return transform(data) if transform else data

    return run


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> Iterator[np.ndarray]:
    """Yield the tensor's bytes in row chunks (bounded temporaries for big embeddings)."""
    if data.ndim <= 1:
        yield gguf.quants.quantize(data, qtype)
        return
    rows = data.reshape(-1, data.shape[-1])
    for start in range(0, rows.shape[0], _ROWS_PER_CHUNK):
        yield gguf.quants.quantize(rows[start:start + _ROWS_PER_CHUNK], qtype)


def write_gguf(ckpt: Checkpoint, out: Path, base: gguf.GGMLQuantizationType, file_type: int,
               name: str, progress: Progress | None = None) -> dict[str, Any]:
    """Write `out` with tensors in `base` precision (F32/F16/BF16/Q8_0). Returns tokenizer facts."""
    spec = spec_for(ckpt)
    vocab = read_vocab(spec.tokenizer, ckpt.path, ckpt.config)
    tensors = plan_tensors(ckpt, spec, base, len(vocab.tokens))
    w = gguf.GGUFWriter(out, spec.gguf_arch)
    try:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        _write_hparams(w, spec, ckpt.config, len(vocab.tokens))
        if spec.task == "feature-extraction" and (pooling := _pooling_type(ckpt)) is not None:
            w.add_pooling_type(pooling)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        special = vocab.add_to(w, ckpt.path, spec)
        for t in tensors:
            # shape in numpy order; with raw_dtype set the writer takes it as element shape
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, t in enumerate(tensors):
            data = t.load()
            if data.shape != t.shape:
                raise CheckpointFormatError(f"{ckpt.path}: tensor for {t.name} has shape {data.shape}, "
                                            f"expected {t.shape}")
            buf = np.empty(t.nbytes, dtype=np.uint8)
            pos = 0
            for chunk in _encode(data, t.qtype):
                raw = chunk.reshape(-1).view(np.uint8)
                buf[pos:pos + raw.size] = raw
                pos += raw.size
            del data
            w.write_tensor_data(buf)
            if progress:
                progress("write", i + 1, len(tensors))
    finally:
        w.close()
    return {
        "model": vocab.model,
        "pre": vocab.pre,
        "vocab_size": len(vocab.tokens),
        "special_ids": {k: v for k, v in special.special_token_ids.items()},
        "add_bos": special.add_special_token.get("bos"),
        "add_eos": special.add_special_token.get("eos"),
        "task": spec.task,
        "arch": spec.gguf_arch,
    }


def source_precision(ckpt: Checkpoint) -> gguf.GGMLQuantizationType:
    """The widest float type among the weights: the lossless intermediate for llama.cpp's quantizer."""
    kinds = {ref.dtype for ref in ckpt.tensors.values()}
    if kinds & {"F32", "F64"}:
        return QT.F32
    if "BF16" in kinds:
        return QT.BF16
    return QT.F16

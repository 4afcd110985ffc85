"""Checks on a checkpoint before any converter or native library sees it.

llama.cpp and ONNX Runtime trust what they are given: a config whose sizes disagree with the
weights, or a vocabulary that disagrees with the embedding, converts fine and then fails at load
(or aborts the process). So sizes are checked here, once, against the tensors actually present:
config values must be numbers of the right kind and range, and every tensor of a family we
convert natively must have the shape its config implies. Each refusal names the file, the field
and what to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edgekit.errors import CheckpointFormatError, TokenizerError

_MAX_DIM = 1 << 31  # GGUF and ONNX store sizes as 32-bit where it matters

# config field -> kind: "int" (>= 1), "int0" (>= 0), "float+" (> 0), "float0" (>= 0); null is allowed
CONFIG_FIELDS: dict[str, str] = {
    "hidden_size": "int", "intermediate_size": "int", "num_hidden_layers": "int",
    "num_attention_heads": "int", "num_key_value_heads": "int", "head_dim": "int", "vocab_size": "int",
    "max_position_embeddings": "int", "type_vocab_size": "int", "sliding_window": "int",
    "rms_norm_eps": "float+", "layer_norm_eps": "float+", "rope_theta": "float+",
    "attn_logit_softcapping": "float0", "final_logit_softcapping": "float0",
    "query_pre_attn_scalar": "float+",
}


def check_config(path: Path, config: dict[str, Any]) -> None:
    """Value types and ranges of the config fields edgekit reads (path: the config.json)."""
    for key, kind in CONFIG_FIELDS.items():
        value = config.get(key)
        if value is None:
            continue
        if kind.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool) \
                and (1 if kind == "int" else 0) <= value < _MAX_DIM
            want = "a whole number >= 1" if kind == "int" else "a whole number >= 0"
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value \
                and abs(value) != float("inf") and (value > 0 if kind == "float+" else value >= 0)
            want = "a finite number > 0" if kind == "float+" else "a finite number >= 0"
        if not ok:
            raise CheckpointFormatError(f"{path}: '{key}' is {json.dumps(value)}; it must be {want}")
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise CheckpointFormatError(f"{path}: num_attention_heads {heads} is not a multiple of "
                                    f"num_key_value_heads {kv}; fix one of them")


def _dims(path: Path, config: dict[str, Any]) -> dict[str, int]:
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    for key in need:
        if config.get(key) is None:
            raise CheckpointFormatError(f"{path}: missing '{key}'")
    h, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim")
    if head_dim is None:
        if h % heads:
            raise CheckpointFormatError(f"{path}: hidden_size {h} is not divisible by num_attention_heads "
                                        f"{heads} and there is no head_dim")
        head_dim = h // heads
    kv = (config.get("num_key_value_heads") or heads) * head_dim
    return {"H": h, "I": config["intermediate_size"], "L": config["num_hidden_layers"],
            "V": config["vocab_size"], "Q": heads * head_dim, "KV": kv, "D": head_dim,
            "QKV": heads * head_dim + 2 * kv, "I2": 2 * config["intermediate_size"],
            "P": config.get("max_position_embeddings") or 0, "T": config.get("type_vocab_size") or 0}


# Shape rules per family: (regex on the HF tensor name, expected shape in config letters).
# H hidden, I intermediate, V vocab, Q heads*head_dim, KV kv_heads*head_dim, D head_dim,
# P positions, T token types. A layer index in the name must be below num_hidden_layers.
_DECODER = (
    (r"model\.embed_tokens\.weight", "V,H"),
    (r"lm_head\.weight", "V,H"),
    (r"model\.norm\.weight", "H"),
    (r"model\.layers\.\d+\.self_attn\.q_proj\.weight", "Q,H"),
    (r"model\.layers\.\d+\.self_attn\.q_proj\.bias", "Q"),
    (r"model\.layers\.\d+\.self_attn\.[kv]_proj\.weight", "KV,H"),
    (r"model\.layers\.\d+\.self_attn\.[kv]_proj\.bias", "KV"),
    (r"model\.layers\.\d+\.self_attn\.o_proj\.weight", "H,Q"),
    (r"model\.layers\.\d+\.self_attn\.[qk]_norm\.weight", "D"),
    (r"model\.layers\.\d+\.mlp\.(gate|up)_proj\.weight", "I,H"),
    (r"model\.layers\.\d+\.mlp\.down_proj\.weight", "H,I"),
    (r"model\.layers\.\d+\.(input|post_attention|pre_feedforward|post_feedforward)_layernorm\.weight", "H"),
)
_BERT = (
    (r"(bert\.)?embeddings\.word_embeddings\.weight", "V,H"),
    (r"(bert\.)?embeddings\.position_embeddings\.weight", "P,H"),
    (r"(bert\.)?embeddings\.token_type_embeddings\.weight", "T,H"),
    (r"(bert\.)?(embeddings|encoder\.layer\.\d+\.(attention\.output|output))"
     r"\.LayerNorm\.(weight|bias|gamma|beta)",
     "H"),
    (r"(bert\.)?encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight", "H,H"),
    (r"(bert\.)?encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.bias", "H"),
    (r"(bert\.)?encoder\.layer\.\d+\.intermediate\.dense\.weight", "I,H"),
    (r"(bert\.)?encoder\.layer\.\d+\.intermediate\.dense\.bias", "I"),
    (r"(bert\.)?encoder\.layer\.\d+\.output\.dense\.weight", "H,I"),
    (r"(bert\.)?encoder\.layer\.\d+\.output\.dense\.bias", "H"),
)
_PHI3 = (  # fused projections: q, k, v rows in one matrix, gate and up rows in another
    *(rule for rule in _DECODER if "_proj" not in rule[0] or "o_proj" in rule[0] or "down_proj" in rule[0]),
    (r"model\.layers\.\d+\.self_attn\.qkv_proj\.weight", "QKV,H"),
    (r"model\.layers\.\d+\.mlp\.gate_up_proj\.weight", "I2,H"),
)
# HF architecture -> (shape rules, the tensor every layer must have, the embedding tensor)
SHAPE_RULES: dict[str, tuple[tuple[tuple[str, str], ...], str, str]] = {
    **{arch: (_DECODER, "model.layers.{i}.self_attn.q_proj.weight", "model.embed_tokens.weight")
       for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                    "Gemma2ForCausalLM", "Gemma3ForCausalLM")},
    "Phi3ForCausalLM": (_PHI3, "model.layers.{i}.self_attn.qkv_proj.weight", "model.embed_tokens.weight"),
    **{arch: (_BERT, "encoder.layer.{i}.attention.self.query.weight", "embeddings.word_embeddings.weight")
       for arch in ("BertModel", "BertForMaskedLM")},
}
_LAYER = re.compile(r"\.(?:layers|layer)\.(\d+)\.")


def check_tensors(ckpt_path: Path, config: dict[str, Any], architecture: str,
                  shapes: dict[str, tuple[tuple[int, ...], Path]]) -> None:
    """Every tensor of a natively converted family has the shape config.json implies.

    shapes: HF tensor name -> (shape, file). Families without rules are left to their exporter.
    """
    rules = SHAPE_RULES.get(architecture)
    if rules is None:
        return
    config_path = ckpt_path / "config.json"
    table, per_layer, embedding = rules
    dims = _dims(config_path, config)
    compiled = [(re.compile(pattern), spec) for pattern, spec in table]
    prefix = "bert." if any(n.startswith("bert.") for n in shapes) else ""
    for name, (shape, file) in shapes.items():
        if (m := _LAYER.search(name)) and int(m.group(1)) >= dims["L"]:
            raise CheckpointFormatError(f"{file}: tensor '{name}' belongs to layer {m.group(1)}, but "
                                        f"{config_path} says num_hidden_layers is {dims['L']}")
        spec = next((s for rx, s in compiled if rx.fullmatch(name)), None)
        if spec is None:
            continue
        want = tuple(dims[letter] for letter in spec.split(","))
        if tuple(shape) != want:
            raise CheckpointFormatError(
                f"{file}: tensor '{name}' has shape {list(shape)}, but {config_path} implies {list(want)} "
                f"({_explain(spec, config)}); the config does not describe these weights")
    name = prefix + embedding if architecture.startswith("Bert") else embedding
    if name not in shapes:
        raise CheckpointFormatError(f"{ckpt_path}: the weights have no '{name}'; "
                                    f"is this a {architecture} checkpoint?")
    for i in range(dims["L"]):
        layer = (prefix if architecture.startswith("Bert") else "") + per_layer.format(i=i)
        if layer not in shapes:
            raise CheckpointFormatError(f"{ckpt_path}: layer {i} has no '{layer}', but {config_path} says "
                                        f"num_hidden_layers is {dims['L']}; the weights are incomplete")


def _explain(spec: str, config: dict[str, Any]) -> str:
    words = {"H": "hidden_size", "I": "intermediate_size", "V": "vocab_size", "P": "max_position_embeddings",
             "QKV": "(num_attention_heads + 2 x num_key_value_heads) x head_dim",
             "I2": "2 x intermediate_size",
             "T": "type_vocab_size", "D": "head_dim", "Q": "num_attention_heads x head_dim",
             "KV": "num_key_value_heads x head_dim"}
    return ", ".join(words[letter] for letter in spec.split(","))


def tokenizer_ids(directory: Path) -> tuple[Path, int] | None:
    """(file, highest id of its base vocabulary) of tokenizer.json, or None without one. Every id
    (added tokens too) must be a whole number >= 0."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data["model"].get("vocab") or {}
        if isinstance(vocab, dict):
            base = list(vocab.items())
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            base = [(item[0], i) for i, item in enumerate(vocab)]
        else:
            raise TypeError(f"model.vocab is {type(vocab).__name__}")
        added = [(t["content"], t["id"]) for t in data.get("added_tokens") or []]
        for text, i in base + added:
            if type(i) is not int or i < 0 or not isinstance(text, str):
                raise ValueError(f"token {json.dumps(text)} has id {json.dumps(i)}; "
                                 "ids are whole numbers >= 0")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            AttributeError, IndexError, OverflowError) as exc:
        raise TokenizerError(f"{path}: unreadable tokenizer ({type(exc).__name__}: {exc})") from exc
    return path, max((i for _, i in base), default=-1)


def check_tokenizer(directory: Path, config: dict[str, Any], architecture: str) -> None:
    """The tokenizer's base vocabulary fits the embedding (no id past its rows).

    Added tokens past the rows are allowed: some releases list tokens the embedding lacks (Gemma 3's
    <image_soft_token>); the converters leave them out. Duplicate texts matter only to llama.cpp and
    are checked on the GGUF token list itself (check_unique_tokens).
    """
    found = tokenizer_ids(directory)
    if found is None or architecture not in SHAPE_RULES:
        return
    path, top = found
    rows = config.get("vocab_size")  # check_tensors has made it equal to the embedding's rows
    if rows is not None and top >= rows:
        raise TokenizerError(f"{path}: token id {top} does not fit the embedding's {rows} rows "
                             f"(vocab_size {config.get('vocab_size')}); "
                             "the tokenizer belongs to another model")


def check_unique_tokens(tokens: list[str] | list[bytes], path: Path) -> None:
    """The token list as written to GGUF: llama.cpp aborts the process on two entries with one text."""
    seen: dict[str | bytes, int] = {}
    for i, token in enumerate(tokens):
        first = seen.setdefault(token, i)
        if first != i:
            text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
            raise TokenizerError(f"{path}: tokens {first} and {i} are both {json.dumps(text)} "
                                 "in the GGUF vocabulary; llama.cpp cannot load duplicate tokens. "
                                 "Remove or rename the duplicate")

"""Per-architecture facts for the GGUF converter, as data.

Each row names the Hugging Face architectures it serves and the models we know use them. The
common decoder metadata (block count, context, widths, heads, rope base, norm epsilon, head_dim)
is written for every family by gguf_convert; a row adds only what its family needs beyond that.
Tensor names come from gguf-py's TensorNameMap, the table every llama.cpp tool shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# (GGUFWriter method, config field, default when absent; None = skip the key when absent)
KeySpec = tuple[str, str, object]


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # llama.cpp architecture name, e.g. "llama"
    task: str  # "text-generation" or "feature-extraction"
    tokenizer: str  # "auto_llama" (SentencePiece if tokenizer.model else BPE), "bpe", "wordpiece"
    permute_qk: bool = False  # llama.cpp's llama arch wants q/k rotary pairs interleaved
    vocab_size_key: bool = False  # also write {arch}.vocab_size
    rope_dim_key: bool = False  # also write {arch}.rope.dimension_count
    keys: tuple[KeySpec, ...] = ()
    # HF tensor-name prefixes/suffixes that carry no weights llama.cpp uses
    skip_prefixes: tuple[str, ...] = ()
    skip_names: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = field(default=())  # (old prefix/suffix, new) before mapping


_LLAMA = ArchSpec(
    # SmolLM/SmolLM2, TinyLlama, Llama-3.x, Mistral 7B: llama.cpp runs all of them as "llama"
    "llama", "text-generation", "auto_llama", permute_qk=True, vocab_size_key=True, rope_dim_key=True,
)
ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,
    # Qwen2 / Qwen2.5 (0.5B ...), Qwen3 (0.6B ...): byte-level BPE, NEOX rope (no permutation)
    "Qwen2ForCausalLM": ArchSpec("qwen2", "text-generation", "bpe"),
    "Qwen3ForCausalLM": ArchSpec("qwen3", "text-generation", "bpe"),
    # BERT encoders for embeddings: all-MiniLM-L6-v2, bge-small, e5-small ...
    "BertModel": ArchSpec(
        "bert", "feature-extraction", "wordpiece",
        skip_prefixes=("cls.", "pooler."), skip_names=("embeddings.position_ids",),
        rename=(("bert.", ""), (".gamma", ".weight"), (".beta", ".bias")),
    ),
}
ARCHITECTURES["BertForMaskedLM"] = ARCHITECTURES["BertModel"]

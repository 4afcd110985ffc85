"""Per-architecture facts for the GGUF converter, as data.

Each row names the Hugging Face architectures it serves and the models we know use them. The
common decoder metadata (block count, context, widths, heads, rope base, norm epsilon, head_dim)
is written for every family by gguf_convert; a row adds only what its family needs beyond that.
Tensor names come from gguf-py's TensorNameMap, the table every llama.cpp tool shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# (GGUFWriter method, config field, default when absent; None = skip the key when absent)
KeySpec = tuple[str, str, object]


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # llama.cpp architecture name, e.g. "llama"
    task: str  # "text-generation" or "feature-extraction"
    tokenizer: str  # "auto_llama" (SentencePiece if tokenizer.model else BPE), "bpe", "wordpiece"
    permute_qk: bool = False  # llama.cpp's llama arch wants q/k rotary pairs interleaved
    norm_offset: float = 0.0  # gemma's RMSNorm scales by (1 + w); GGUF stores 1 + w
    rope_base_key: bool = True  # gemma2 leaves rope.freq_base to llama.cpp's default
    rope_base_default: float | None = None  # written when the config has no rope theta
    space_prefix: bool | None = None  # tokenizer.ggml.add_space_prefix for a SentencePiece vocab
    space_prefix_from_config: bool = False  # llama family: tokenizer_config's add_prefix_space
    trim_embeddings: bool = False  # gemma3: drop embedding rows past the tokenizer's vocab
    vocab_size_key: bool = False  # also write {arch}.vocab_size
    rope_dim_key: bool = False  # also write {arch}.rope.dimension_count
    # write attention.key/value_length = hidden / heads when config.json omits head_dim, as llama.cpp's
    # converter does for families whose transformers config class derives it (LlamaConfig does,
    # MistralConfig and Qwen2Config do not)
    head_dim_default: bool = False
    keys: tuple[KeySpec, ...] = ()
    zero_keys: tuple[str, ...] = ()  # methods of `keys` written even when the value is 0 (phi3's window)
    longrope: bool = False  # write longrope's factor tensors and attention factor when the config has them
    # HF tensor-name prefixes/suffixes that carry no weights llama.cpp uses
    skip_prefixes: tuple[str, ...] = ()
    skip_names: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = field(default=())  # (old prefix/suffix, new) before mapping


_LLAMA = ArchSpec(
    # SmolLM/SmolLM2, TinyLlama, Llama-3.x, Mistral 7B: llama.cpp runs all of them as "llama"
    "llama", "text-generation", "auto_llama", permute_qk=True, vocab_size_key=True, rope_dim_key=True,
    space_prefix_from_config=True, head_dim_default=True,
)
ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": replace(_LLAMA, head_dim_default=False),
    # Qwen2 / Qwen2.5 (0.5B ...), Qwen3 (0.6B ...): byte-level BPE, NEOX rope (no permutation)
    "Qwen2ForCausalLM": ArchSpec("qwen2", "text-generation", "bpe"),
    "Qwen3ForCausalLM": ArchSpec("qwen3", "text-generation", "bpe"),
    # Gemma 2 (2B, 9B): SentencePiece without a dummy prefix, (1 + w) norms, soft-capping,
    # an unused lm_head (the output is the tied embedding)
    "Gemma2ForCausalLM": ArchSpec(
        "gemma2", "text-generation", "auto_llama", norm_offset=1.0, rope_base_key=False, space_prefix=False,
        skip_names=("lm_head.weight",),
        keys=(("add_attn_logit_softcapping", "attn_logit_softcapping", 50.0),
              ("add_final_logit_softcapping", "final_logit_softcapping", 30.0),
              ("add_sliding_window", "sliding_window", 4096)),
    ),
    # Gemma 3 text models (270M, 1B): as Gemma 2 without attention soft-capping, local/global rope
    "Gemma3ForCausalLM": ArchSpec(
        "gemma3", "text-generation", "auto_llama", norm_offset=1.0, rope_base_default=1_000_000.0,
        space_prefix=False, trim_embeddings=True,
        keys=(("add_final_logit_softcapping", "final_logit_softcapping", None),
              ("add_sliding_window", "sliding_window", None)),
    ),
    # Phi-3 / Phi-3.5-mini: SentencePiece, fused qkv and gate_up (gguf-py maps both), longrope at 128k
    "Phi3ForCausalLM": ArchSpec(
        "phi3", "text-generation", "auto_llama", rope_dim_key=True, longrope=True,
        keys=(("add_rope_scaling_orig_ctx_len", "original_max_position_embeddings", None),
              ("add_sliding_window", "sliding_window", 0)),
        zero_keys=("add_sliding_window",),
    ),
    # BERT encoders for embeddings: all-MiniLM-L6-v2, bge-small, e5-small ...
    "BertModel": ArchSpec(
        "bert", "feature-extraction", "wordpiece",
        skip_prefixes=("cls.", "pooler."), skip_names=("embeddings.position_ids",),
        rename=(("bert.", ""), (".gamma", ".weight"), (".beta", ".bias")),
    ),
}
ARCHITECTURES["BertForMaskedLM"] = ARCHITECTURES["BertModel"]

"""Tiny random Hugging Face checkpoints, one per supported architecture, built in seconds.

Tokenizers are real tokenizers of the right kind: the real SmolLM2 and MiniLM tokenizers, and
small ones trained here (byte-level BPE with the Llama-3 or Qwen2 pre-tokenizer, SentencePiece).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b  # 1234 5678\n",
    "El veloz murciélago hindú comía feliz cardillo y kiwi.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "日本語のテキストも少し含めます。中文也可以。",
    "Emoji time 🤖🚀✨ and numbers 3.14159, 2026-11-28.",
    "Привет, мир! Как дела?",
] * 20

# Prose, code, several languages and emoji: the text every tokenizer test encodes.
PROBE_TEXT = (
    "Hello world! It's a test: we'll see 12345 numbers, 3.14 and 1,000,000.\n"
    "def f(x):\n\treturn x ** 2  # square\n"
    "Español: ¿Dónde está la biblioteca? Français: où est la gare ? Deutsch: Größe.\n"
    "Русский текст, 中文字符, 日本語のかな, 한국어.\n"
    "Emoji: 🤖🚀✨👍🏽 and spaces   between\n\n   words."
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def bpe_tokenizer(dest: Path, regex: str, vocab_size: int = 600) -> int:
    """Train a byte-level BPE with a Split(regex) + ByteLevel pre-tokenizer; returns its size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(dest / "tokenizer.json"))
    _write_json(dest / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "chat_template": CHATML, "add_prefix_space": False,
        "model_max_length": 2048,
    })
    return tok.get_vocab_size()


def sentencepiece_tokenizer(dest: Path, vocab_size: int = 400, gemma: bool = False,
                            symbols: tuple = ()) -> int:
    """Train a small SentencePiece BPE with byte fallback: the Llama-2 / TinyLlama kind, or with
    gemma=True the Gemma kind (no dummy-prefix space, GemmaTokenizer). symbols: user-defined pieces."""
    import sentencepiece as spm

    text = dest / "corpus.txt"
    text.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(dest / "spm"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=not gemma, normalization_rule_name="identity", split_digits=True, minloglevel=2,
        user_defined_symbols=list(symbols),
    )
    (dest / "spm.model").rename(dest / "tokenizer.model")
    (dest / "spm.vocab").unlink()
    text.unlink()
    _write_json(dest / "tokenizer_config.json", {
        "tokenizer_class": "GemmaTokenizer" if gemma else "LlamaTokenizer", "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>", "add_bos_token": True,
        "add_eos_token": False, "legacy": False, "model_max_length": 2048,
    })
    _write_json(dest / "special_tokens_map.json",
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return vocab_size


def _copy_tokenizer(src: Path, dest: Path, names: list[str]) -> None:
    for n in names:
        if (src / n).is_file():
            shutil.copyfile(src / n, dest / n)


def _decoder_config(vocab: int, **extra) -> dict:
    base = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                initializer_range=0.2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    base.update(extra)
    return base


def build(arch: str, dest: Path, smollm2_dir: Path | None = None, minilm_dir: Path | None = None) -> Path:
    """Write a tiny random checkpoint of `arch` into dest (created) and return it."""
    import torch
    import transformers

    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if arch == "llama-smollm2":  # llama with SmolLM2's real byte-level BPE ("smollm" pre-tokenizer)
        assert smollm2_dir is not None
        _copy_tokenizer(smollm2_dir, dest,
                        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
        cfg = transformers.LlamaConfig(**_decoder_config(49152, tie_word_embeddings=True))
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "llama-spm":  # TinyLlama / Llama-2 style SentencePiece
        n = sentencepiece_tokenizer(dest)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_decoder_config(n)))
    elif arch == "llama3":  # Llama-3.x: llama-bpe pre-tokenizer, llama3 rope scaling
        n = bpe_tokenizer(dest, LLAMA3_REGEX)
        # the config.json layout real Llama-3.x checkpoints have (rope_scaling + rope_theta)
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}
        cfg = transformers.LlamaConfig(**_decoder_config(n, tie_word_embeddings=True), rope_scaling=rope,
                                       rope_theta=500000.0)
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "mistral":
        n = sentencepiece_tokenizer(dest)
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**_decoder_config(n),
                                                                           sliding_window=None))
    elif arch == "qwen2":
        n = bpe_tokenizer(dest, QWEN2_REGEX)
        model = transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(**_decoder_config(n, tie_word_embeddings=True)))
    elif arch == "qwen3":
        n = bpe_tokenizer(dest, QWEN2_REGEX)
        cfg = transformers.Qwen3Config(**_decoder_config(n), head_dim=32)
        model = transformers.Qwen3ForCausalLM(cfg)
    elif arch == "gemma2":
        n = sentencepiece_tokenizer(dest, gemma=True)
        cfg = transformers.Gemma2Config(**_decoder_config(n, tie_word_embeddings=True), head_dim=16,
                                        query_pre_attn_scalar=16, sliding_window=128)
        model = transformers.Gemma2ForCausalLM(cfg)
    elif arch == "gemma3":
        n = sentencepiece_tokenizer(dest, gemma=True)
        cfg = transformers.Gemma3TextConfig(**_decoder_config(n, tie_word_embeddings=True), head_dim=16,
                                            query_pre_attn_scalar=16, sliding_window=128)
        model = transformers.Gemma3ForCausalLM(cfg)
    elif arch == "phi3":  # Phi-3-mini: SentencePiece, fused qkv and gate_up, a sliding window
        # llama.cpp looks up <|endoftext|> by name in any model called "phi3" (real Phi-3 has it)
        n = sentencepiece_tokenizer(dest, symbols=("<|endoftext|>",))
        # the real window (2047): llama.cpp runs Phi-3 without one, so only a window past the probe text
        # lets both formats match transformers; test_onnx_matrix checks a short window on ONNX alone
        cfg = transformers.Phi3Config(**_decoder_config(n), original_max_position_embeddings=256,
                                      pad_token_id=0, sliding_window=2047)
        model = transformers.Phi3ForCausalLM(cfg)
    elif arch == "distilbert":  # no native builder: the ONNX path goes through optimum-onnx
        assert minilm_dir is not None
        _copy_tokenizer(minilm_dir, dest, ["tokenizer.json", "tokenizer_config.json",
                                           "special_tokens_map.json", "vocab.txt"])
        cfg = transformers.DistilBertConfig(vocab_size=30522, dim=64, hidden_dim=128, n_layers=2, n_heads=4,
                                            max_position_embeddings=128, initializer_range=0.2)
        model = transformers.DistilBertModel(cfg)
    elif arch == "bert":  # MiniLM's real WordPiece tokenizer and pooling config
        assert minilm_dir is not None
        _copy_tokenizer(minilm_dir, dest, ["tokenizer.json", "tokenizer_config.json",
                                           "special_tokens_map.json", "vocab.txt", "modules.json",
                                           "sentence_bert_config.json"])
        (dest / "1_Pooling").mkdir(exist_ok=True)
        shutil.copyfile(minilm_dir / "1_Pooling" / "config.json", dest / "1_Pooling" / "config.json")
        pooling = json.loads((dest / "1_Pooling" / "config.json").read_text())
        pooling["word_embedding_dimension"] = 64
        _write_json(dest / "1_Pooling" / "config.json", pooling)
        cfg = transformers.BertConfig(vocab_size=30522, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=128, initializer_range=0.2)
        model = transformers.BertModel(cfg, add_pooling_layer=True)
    else:
        raise ValueError(arch)
    model.save_pretrained(dest, safe_serialization=True)
    return dest


# The GGUF families; "distilbert" is built too, for the ONNX path's optimum fallback.
ARCHS = ["llama-smollm2", "llama-spm", "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3",
         "bert"]

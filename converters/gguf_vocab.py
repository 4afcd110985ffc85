"""Tokenizer -> GGUF vocabulary: byte-level BPE ("gpt2"), SentencePiece ("llama"), WordPiece ("bert").

llama.cpp picks its pre-tokenizer by a name in the file. llama.cpp's own converter guesses that
name by hashing the tokens of a probe string; we read it from the tokenizer's own definition
(the pre_tokenizer of tokenizer.json), so an unknown pre-tokenizer is an error, never a guess.
Special ids, add-bos/eos flags, merges and the chat template go through gguf.SpecialVocab, the
same reader llama.cpp's tools use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from edgekit.errors import TokenizerError

from .gguf_arch import ArchSpec
from .validate import check_unique_tokens

# The pre-tokenizer regexes of tokenizer.json (Split pattern, in order) -> llama.cpp's name.
# Each row was checked against the regex list llama.cpp applies for that name (src/llama-vocab.cpp).
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Signature: tuple of steps; ("split", regex) / ("digits", individual) / ("bytelevel", use_regex)
PRE_TOKENIZERS: dict[tuple, str] = {
    (("bytelevel", True),): "gpt-2",  # GPT-2, distilgpt2
    (("digits", True), ("bytelevel", True)): "smollm",  # SmolLM / SmolLM2 (StarCoder-style digits)
    (("split", _LLAMA3), ("bytelevel", False)): "llama-bpe",  # Llama-3.x
    (("split", _QWEN2), ("bytelevel", False)): "qwen2",  # Qwen2, Qwen2.5, Qwen3
    (("split", _TEKKEN), ("bytelevel", False)): "tekken",  # Mistral Nemo / tekken tokenizers
}


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str
    tokens: list[str] | list[bytes]
    types: list[int]
    scores: list[float] | None = None
    token_type_count: int | None = None  # bert only

    def add_to(self, writer: gguf.GGUFWriter, checkpoint_dir: Path, spec: ArchSpec) -> gguf.SpecialVocab:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.token_type_count is not None:
            writer.add_token_type_count(self.token_type_count)
        special = gguf.SpecialVocab(checkpoint_dir, load_merges=self.model == "gpt2",
                                    n_vocab=len(self.tokens))
        tj_path = checkpoint_dir / "tokenizer.json"
        tj = _load_tokenizer_json(tj_path) if tj_path.is_file() else {}
        tok_config = _json_or_empty(checkpoint_dir / "tokenizer_config.json")
        ids = special.special_token_ids
        # BERT-style tokenizers name [CLS]/[SEP] only; llama.cpp reads them as BOS/EOS.
        if "bos" not in ids and "cls" in ids:
            ids["bos"] = ids["cls"]
        if "eos" not in ids and "sep" in ids:
            ids["eos"] = ids["sep"]
        ids.pop("cls", None)  # GGUF has no cls key (gguf-py would only warn about it); it is BOS above
        for typ, value in added_special_flags(tj, tok_config).items():
            special.add_special_token[typ] = value
        special.add_to_gguf(writer, quiet=True)
        if spec.space_prefix is not None and self.model == "llama":
            writer.add_add_space_prefix(spec.space_prefix)
        elif spec.space_prefix_from_config and isinstance(tok_config.get("add_prefix_space"), bool):
            writer.add_add_space_prefix(tok_config["add_prefix_space"])
        for key, value in normalizer_flags(tj.get("normalizer") or {}).items():
            writer.add_bool(f"tokenizer.ggml.normalizer.{key}", value)
        return special


def _json_or_empty(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: unreadable ({exc})") from exc
    return data if isinstance(data, dict) else {}


def added_special_flags(tj: dict[str, Any], tok_config: dict[str, Any]) -> dict[str, bool]:
    """Whether encoding adds BOS/EOS/SEP, read from the post-processor the tokenizer really runs.

    ByteLevel adds nothing; Roberta adds all three; a TemplateProcessing adds BOS when its single
    template starts with a special token and EOS when it ends with one. A pair template that only
    repeats the trailing token adds no separate SEP. tokenizer_config's add_*_token fill the rest.
    """
    flags: dict[str, bool] = {}
    post = tj.get("post_processor") or {}
    for proc in post.get("processors", [post]) if post else []:
        kind = proc.get("type")
        if kind == "ByteLevel":
            flags.setdefault("bos", False)
            flags.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            flags.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            single = proc.get("single", [])
            if len(single) > 1:
                if "SpecialToken" in single[0]:
                    flags["bos"] = True
                if "SpecialToken" in single[-1]:
                    flags["eos"] = True
            pair = proc.get("pair", [])
            lead = 1 if pair and "SpecialToken" in pair[0] and flags.get("bos") else 0
            trail = -1 if pair and "SpecialToken" in pair[-1] and flags.get("eos") else None
            inner = pair[lead:trail]
            if len(inner) > 2 and "Sequence" in inner[0] and "Sequence" in inner[-1]:
                middle = inner[1:-1]  # what stands between A and B
                first_sep = "SpecialToken" in middle[0] and not flags.get("eos")
                second_sep = len(middle) == 2 and "SpecialToken" in middle[1]
                flags["sep"] = first_sep or second_sep
    for typ in ("bos", "eos", "sep"):
        value = tok_config.get(f"add_{typ}_token")
        if isinstance(value, bool):
            flags.setdefault(typ, value)
    return flags


def normalizer_flags(normalizer: dict[str, Any]) -> dict[str, bool]:
    """Lowercasing / accent stripping the tokenizer applies before WordPiece."""
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return {"lowercase": True}
    if kind == "StripAccents":
        return {"strip_accents": True}
    if kind == "BertNormalizer":
        return {k: v for k, v in (("lowercase", normalizer.get("lowercase")),
                                  ("strip_accents", normalizer.get("strip_accents"))) if isinstance(v, bool)}
    out: dict[str, bool] = {}
    if kind == "Sequence":
        for item in normalizer.get("normalizers", []):
            out.update(normalizer_flags(item))
    return out


def looks_special(token: str) -> bool:
    """Added tokens some repos forget to flag as special (<|...|>, <pad>, gemma's <unused..>)."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _load_tokenizer_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: unreadable tokenizer ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{path}: no 'model' section; not a tokenizers JSON file")
    return data


def pre_tokenizer_name(tokenizer_json: dict[str, Any], path: Path) -> str:
    """Map tokenizer.json's pre_tokenizer definition to llama.cpp's pre-tokenizer name."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    sig: list[tuple] = []
    for step in steps:
        kind = step.get("type")
        if kind == "Split":
            pattern = step.get("pattern", {})
            sig.append(("split", pattern.get("Regex", pattern.get("String"))))
        elif kind == "Digits":
            sig.append(("digits", bool(step.get("individual_digits"))))
        elif kind == "ByteLevel":
            sig.append(("bytelevel", bool(step.get("use_regex", True))))
        else:
            sig.append((str(kind),))
    name = PRE_TOKENIZERS.get(tuple(sig))
    if name is None:
        raise TokenizerError(
            f"{path}: pre-tokenizer {sig} is not one llama.cpp implements under a name we know "
            f"({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); converting it would tokenize differently"
        )
    return name


def _base_vocab(tj: dict[str, Any], vocab_size: int, path: Path) -> tuple[list[str], list[int]]:
    """Tokens by id with NORMAL/CONTROL/USER_DEFINED/UNUSED types, padded to the model's vocab size."""
    vocab: dict[str, int] = dict(tj["model"].get("vocab") or {})
    added = {int(t["id"]): t for t in tj.get("added_tokens", [])}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    if by_id and max(by_id) >= vocab_size:
        raise TokenizerError(f"{path}: token id {max(by_id)} does not fit the model's vocab_size "
                             f"{vocab_size}")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tok = by_id[i]
        if i in added:
            if added[i].get("special") or looks_special(tok):
                types.append(gguf.TokenType.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalized
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(tok)
    return tokens, types


def bpe_vocab(directory: Path, vocab_size: int | None) -> Vocab:
    path = directory / "tokenizer.json"
    tj = _load_tokenizer_json(path)
    model = tj["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(f"{path}: expected a BPE model, found {model.get('type')}")
    if model.get("byte_fallback"):
        raise TokenizerError(
            f"{path}: a byte-fallback BPE (SentencePiece-style) tokenizer needs its tokenizer.model "
            "to convert"
        )
    size = vocab_size or (len(model["vocab"]) + len(tj.get("added_tokens", [])))
    tokens, types = _base_vocab(tj, size, path)
    return Vocab("gpt2", pre_tokenizer_name(tj, path), tokens, types)


def wordpiece_vocab(directory: Path, vocab_size: int | None, type_vocab_size: int) -> Vocab:
    """BERT WordPiece in llama.cpp's phantom-space form: "##x" -> "x", "x" -> "\u2581x"."""
    path = directory / "tokenizer.json"
    if path.is_file():
        tj = _load_tokenizer_json(path)
        if tj["model"].get("type") != "WordPiece":
            raise TokenizerError(f"{path}: expected a WordPiece model, found {tj['model'].get('type')}")
    else:
        vocab_txt = directory / "vocab.txt"
        try:
            lines = vocab_txt.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{vocab_txt}: unreadable ({exc})") from exc
        tj = {"model": {"vocab": {t: i for i, t in enumerate(lines)}}, "added_tokens": []}
        path = vocab_txt
    size = vocab_size or len(tj["model"]["vocab"])
    tokens, types = _base_vocab(tj, size, path)
    # BERT's [CLS]/[SEP]/[PAD]/[MASK]/[UNK] are control tokens even when listed only in vocab.txt.
    bert_specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    types = [gguf.TokenType.CONTROL if t in bert_specials else ty
             for t, ty in zip(tokens, types, strict=True)]
    phantom = [t if ty == gguf.TokenType.CONTROL else (t[2:] if t.startswith("##") else "\u2581" + t)
               for t, ty in zip(tokens, types, strict=True)]
    return Vocab("bert", "jina-v2-en", phantom, types, token_type_count=type_vocab_size)


def sentencepiece_vocab(directory: Path, vocab_size: int | None) -> Vocab:
    import sentencepiece as spm

    path = directory / "tokenizer.model"
    proc = spm.SentencePieceProcessor()
    try:
        proc.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{path}: not a SentencePiece model ({exc})") from exc
    size = vocab_size or proc.vocab_size()
    tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [gguf.TokenType.UNUSED] * size
    for i in range(min(size, proc.vocab_size())):
        tokens[i] = proc.IdToPiece(i).encode("utf-8")
        scores[i] = proc.GetScore(i)
        types[i] = (gguf.TokenType.UNKNOWN if proc.IsUnknown(i)
                    else gguf.TokenType.CONTROL if proc.IsControl(i)
                    else gguf.TokenType.UNUSED if proc.IsUnused(i) else gguf.TokenType.BYTE if proc.IsByte(i)
                    else gguf.TokenType.NORMAL)
    added_file = directory / "added_tokens.json"
    for text, i in _json_or_empty(added_file).items():
        if not (isinstance(i, int) and 0 <= i):
            raise TokenizerError(f"{added_file}: token {json.dumps(text)} has id {json.dumps(i)}; "
                                 "ids are whole numbers >= 0")
        if i < size:
            tokens[i], scores[i], types[i] = text.encode("utf-8"), -1000.0, gguf.TokenType.USER_DEFINED
    config = directory / "tokenizer_config.json"
    decoder = _json_or_empty(config).get("added_tokens_decoder") or {}
    for key, data in decoder.items() if isinstance(decoder, dict) else ():
        try:
            i, text = int(key), str(data["content"])
        except (ValueError, TypeError, KeyError) as exc:
            raise TokenizerError(f"{config}: added_tokens_decoder entry {key!r} is malformed "
                                 f"({exc})") from exc
        if not 0 <= i < size:
            continue
        if data.get("special") or looks_special(text):
            types[i] = gguf.TokenType.CONTROL
        else:
            text = text.replace("\u2581", " ")
            types[i] = gguf.TokenType.USER_DEFINED
        scores[i], tokens[i] = -1000.0, text.encode("utf-8")
    return Vocab("llama", "default", tokens, types, scores=scores)


# tokenizer kind -> how to read it; the architecture table names the kind each family uses.
def read_vocab(kind: str, directory: Path, config: dict[str, Any]) -> Vocab:
    source = next((directory / n for n in ("tokenizer.json", "tokenizer.model", "vocab.txt")
                   if (directory / n).is_file()), directory)
    try:
        vocab = _read_vocab(kind, directory, config)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError,
            OverflowError) as exc:  # wrong shapes
        raise TokenizerError(f"{source}: malformed tokenizer ({type(exc).__name__}: {exc})") from exc
    check_unique_tokens(vocab.tokens, source)
    return vocab


def _read_vocab(kind: str, directory: Path, config: dict[str, Any]) -> Vocab:
    vocab_size = config.get("vocab_size")
    if kind == "wordpiece":
        return wordpiece_vocab(directory, vocab_size, config.get("type_vocab_size", 1))
    if kind == "auto_llama":  # llama family: SentencePiece if the repo has tokenizer.model, else BPE
        if (directory / "tokenizer.model").is_file():
            return sentencepiece_vocab(directory, vocab_size)
        kind = "bpe"
    if kind == "bpe":
        if not (directory / "tokenizer.json").is_file():
            raise TokenizerError(f"{directory}: no tokenizer.json for this byte-level BPE model")
        return bpe_vocab(directory, vocab_size)
    raise TokenizerError(f"{directory}: unknown tokenizer kind {kind}")

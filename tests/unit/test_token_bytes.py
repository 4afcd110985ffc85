"""TextTokenizer (runtimes/text.py): the raw bytes of each token, which streaming joins and decodes.

Tokenizers are built here with the `tokenizers` library: a byte-level BPE (GPT-2 style) trained on a
few sentences, and a SentencePiece-style BPE with byte fallback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from edgekit.errors import ArtifactError
from edgekit.runtimes.text import TextTokenizer

CORPUS = [
    "Hello world, café au lait and a crème brûlée.",
    "日本語のテキスト, 日本 and 中文.",
    "Emoji time 🤖🚀✨ and a rocket 🚀 again.",
    "def f(x):\n\treturn x ** 2  # 1234\n",
] * 10

TEXTS = [
    "Hello world",
    "café 日本 🤖",
    "crème brûlée\n\tindented  double  spaces",
    "unseen characters: Ω ≈ ç Ж 한국어 😀👍🏽",  # none of these were in the training text
    "",
]

SPECIAL = "<|endoftext|>"


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> tuple[Tokenizer, TextTokenizer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    path = tmp_path_factory.mktemp("bytelevel") / "tokenizer.json"
    tok.save(str(path))
    return tok, TextTokenizer(path)


def _sentencepiece_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["\u2581", "a", "e", "h", "l", "o", "he", "ll", "llo", "hello", "\u2581hello"]:
        vocab[piece] = len(vocab)
    merges = [("h", "e"), ("l", "l"), ("ll", "o"), ("he", "llo"), ("\u2581", "hello")]
    return vocab, merges


@pytest.fixture(scope="module")
def byte_fallback(tmp_path_factory) -> tuple[Tokenizer, TextTokenizer, dict[str, int]]:
    """Llama-2 style: spaces become U+2581, characters outside the vocab become <0xXX> pieces."""
    vocab, merges = _sentencepiece_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    path = tmp_path_factory.mktemp("bytefallback") / "tokenizer.json"
    tok.save(str(path))
    return tok, TextTokenizer(path), vocab


def _joined(tok: TextTokenizer, ids: list[int]) -> bytes:
    return b"".join(tok.token_bytes(i) for i in ids)


# ---- byte-level BPE --------------------------------------------------------------------------

@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_tokens_join_to_the_utf8_text(byte_level, text):
    _, tok = byte_level
    ids = tok.encode(text, add_special=False)
    assert _joined(tok, ids) == text.encode("utf-8")


def test_byte_level_splits_characters_across_tokens(byte_level):
    # the point of per-token bytes: a character outside the vocab spans several tokens, and each
    # token alone is not valid UTF-8
    _, tok = byte_level
    ids = tok.encode("Ж", add_special=False)
    assert len(ids) == 2
    pieces = [tok.token_bytes(i) for i in ids]
    assert pieces == [b"\xd0", b"\x96"]
    for piece in pieces:
        with pytest.raises(UnicodeDecodeError):
            piece.decode("utf-8")


def test_byte_level_matches_the_library_decoder(byte_level):
    hf, tok = byte_level
    for text in TEXTS:
        ids = tok.encode(text, add_special=False)
        assert _joined(tok, ids).decode("utf-8") == hf.decode(ids)


def test_byte_level_space_marker_is_a_space(byte_level):
    hf, tok = byte_level
    ids = tok.encode("a b", add_special=False)
    assert b" " in _joined(tok, ids)
    assert any(hf.id_to_token(i).startswith("\u0120") for i in ids)  # GPT-2's stand-in for a space


def test_byte_level_special_token_prints_nothing(byte_level):
    hf, tok = byte_level
    special_id = hf.token_to_id(SPECIAL)
    assert special_id is not None
    assert tok.token_bytes(special_id) == b""
    ids = tok.encode(f"hi{SPECIAL}there", add_special=False)
    assert special_id in ids
    assert _joined(tok, ids) == b"hithere"


def test_byte_level_plain_added_token_keeps_its_text(byte_level):
    hf, tok = byte_level
    added = hf.token_to_id("<tool_call>")
    assert tok.token_bytes(added) == b"<tool_call>"
    assert _joined(tok, tok.encode("x <tool_call> y", add_special=False)) == b"x <tool_call> y"


def test_token_bytes_is_stable_across_calls(byte_level):
    _, tok = byte_level
    ids = tok.encode("café", add_special=False)
    assert [tok.token_bytes(i) for i in ids] == [tok.token_bytes(i) for i in ids]


# ---- SentencePiece-style byte fallback -------------------------------------------------------

def test_byte_fallback_newline_piece(byte_fallback):
    _, tok, vocab = byte_fallback
    assert tok.token_bytes(vocab["<0x0A>"]) == b"\n"
    assert tok.token_bytes(vocab["<0x00>"]) == b"\x00"
    assert tok.token_bytes(vocab["<0xFF>"]) == b"\xff"


def test_byte_fallback_space_marker_is_a_space(byte_fallback):
    _, tok, vocab = byte_fallback
    assert tok.token_bytes(vocab["\u2581hello"]) == b" hello"
    assert tok.token_bytes(vocab["\u2581"]) == b" "


@pytest.mark.parametrize(("text", "uses_bytes"), [
    ("hello\nhello", True), ("a hello é", True), ("hello 日本 🤖\n", True), ("ooh hello", False)])
def test_byte_fallback_tokens_join_to_the_utf8_text(byte_fallback, text, uses_bytes):
    hf, tok, _ = byte_fallback
    ids = tok.encode(text, add_special=False)
    assert any(hf.id_to_token(i).startswith("<0x") for i in ids) == uses_bytes
    assert _joined(tok, ids) == text.encode("utf-8")
    assert _joined(tok, ids).decode("utf-8") == hf.decode(ids)


def test_byte_fallback_special_tokens_print_nothing(byte_fallback):
    _, tok, vocab = byte_fallback
    assert tok.token_bytes(vocab["<s>"]) == b""
    assert tok.token_bytes(vocab["</s>"]) == b""


def test_word_level_vocab_byte_piece_without_byte_level_decoder(tmp_path):
    vocab = {"[UNK]": 0, "<0x0A>": 1, "hi": 2, "<0x0a>": 3, "<0x0A": 4}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    text = TextTokenizer(path)
    assert text.token_bytes(1) == b"\n"
    assert text.token_bytes(3) == b"\n"  # hex digits in either case
    assert text.token_bytes(2) == b"hi"
    assert text.token_bytes(4) == b"<0x0A"  # not a byte piece: kept as text


# ---- unreadable files ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"not json at all", b'{"version": "1.0"}', b"\xff\xfe\x00garbage"])
def test_unreadable_tokenizer_raises_artifact_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match="unreadable tokenizer"):
        TextTokenizer(path)


def test_missing_tokenizer_raises_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="unreadable tokenizer"):
        TextTokenizer(Path(tmp_path) / "absent.json")

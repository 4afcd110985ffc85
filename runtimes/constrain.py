"""Decoding constrained by a grammar: before each token is chosen, the tokens the grammar forbids are
masked out of the logits, so a reply matches its JSON schema, regex or tool-call format by construction.

One compiler for both backends: llguidance (the library onnxruntime-genai and llama.cpp use for this),
which needs nothing but its own wheel, computes a token mask in well under a millisecond and reports
JSON Schema keywords it does not implement instead of ignoring them. Each backend gives its vocabulary
(ONNX: the artifact's tokenizer.json; llama.cpp: the GGUF's own vocabulary) as a ConstraintVocab,
which keeps every grammar it compiled: a schema used again starts from a copy.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import BackendError, MissingDependencyError, SchemaError

# JSON as one line with a space after ',' and ':': a model may not fill a reply with whitespace
# (flexible whitespace lets a small model loop on newlines until max_tokens, leaving broken JSON)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
KEPT_GRAMMARS = 64  # compiled grammars kept per vocabulary


def _llguidance():
    try:
        import llguidance
    except ImportError as exc:  # a dependency of edgekit itself: only a broken install lacks it
        raise MissingDependencyError("llguidance", "", "Structured output (JSON schemas, regexes, tool "
                                     "calls)", install="pip install llguidance") from exc
    return llguidance


@dataclass(frozen=True)
class Grammar:
    """A grammar in llguidance's form (what its grammar_from_* give), the request field it came from
    (named in errors), and a trigger: when set, decoding is free until the text ends with it, then
    constrained (a tool call that the model may or may not start)."""

    text: str
    what: str
    trigger: str = ""


def json_schema_grammar(schema: dict[str, Any], what: str) -> Grammar:
    """The grammar of JSON values matching `schema`; a SchemaError names what it cannot enforce."""
    llg = _llguidance()
    try:
        text = llg.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"{what}: not a JSON schema ({exc})", _field(what)) from None
    return _checked(Grammar(text, what))


def regex_grammar(pattern: str, what: str) -> Grammar:
    return _checked(Grammar(_llguidance().LLMatcher.grammar_from_regex(pattern), what))


def lark_grammar(lark: str, what: str, trigger: str = "") -> Grammar:
    return _checked(Grammar(_llguidance().LLMatcher.grammar_from_lark(lark), what, trigger))


def _checked(grammar: Grammar) -> Grammar:
    """The grammar, once llguidance has found nothing wrong with it (no vocabulary needed for that)."""
    failed, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar.text, None)
    if failed:
        raise SchemaError(f"{grammar.what}: {_plain(messages[0])}", _field(grammar.what))
    return grammar


def _field(what: str) -> str:
    """The request field a grammar came from: "tools" of "tools[0].function.parameters"."""
    return re.match(r"\w*", what).group()


def _plain(message: str) -> str:
    """llguidance's message in one line: "Unimplemented keys: [\"not\"]" and the like."""
    return " ".join(message.split())[:500]


class ConstraintVocab:
    """A backend's vocabulary as llguidance sees it (`tokenizer`, an LLTokenizer whose size is the width
    of the model's logits), and the grammars compiled against it."""

    def __init__(self, tokenizer: Any, width: int) -> None:
        self.tokenizer, self.width = tokenizer, width
        self._compiled: OrderedDict[str, Any] = OrderedDict()  # grammar text -> matcher at its start
        self._lock = threading.Lock()

    def compile(self, grammar: Grammar) -> tuple[float, bool]:
        """Compile `grammar` for this vocabulary, unless it already is: (milliseconds, was kept)."""
        start = time.perf_counter()
        kept = self._matcher(grammar)[1]
        return (0.0 if kept else 1000 * (time.perf_counter() - start)), kept

    def start(self, grammar: Grammar) -> Constraint:
        """A generation's constraint: a copy of the compiled grammar at its start."""
        return Constraint(self._matcher(grammar, copy=True)[0], self, grammar)

    def _matcher(self, grammar: Grammar, copy: bool = False) -> tuple[Any, bool]:
        """(the grammar's matcher at its start, or a copy of it; whether it was compiled before)."""
        with self._lock:
            matcher = self._compiled.get(grammar.text)
            if matcher is not None:
                self._compiled.move_to_end(grammar.text)
                return (matcher.deep_copy() if copy else matcher), True
        matcher = _llguidance().LLMatcher(self.tokenizer, grammar.text, log_level=0)  # outside the lock
        if matcher.is_error():
            raise SchemaError(f"{grammar.what}: {_plain(matcher.get_error())}", _field(grammar.what))
        with self._lock:
            self._compiled[grammar.text] = matcher
            while len(self._compiled) > KEPT_GRAMMARS:
                self._compiled.popitem(last=False)
            return (matcher.deep_copy() if copy else matcher), False


class Constraint:
    """One generation's place in its grammar. mask() before a token is chosen, accept() after."""

    def __init__(self, matcher: Any, vocab: ConstraintVocab, grammar: Grammar) -> None:
        self._matcher, self._vocab, self.grammar = matcher, vocab, grammar
        self._bits = np.zeros((vocab.width + 31) // 32, dtype=np.int32)
        self.active = not grammar.trigger  # a trigger: not yet, until the text ends with it
        self._trigger = grammar.trigger.encode()
        self._text = b""  # the text so far, while waiting for the trigger
        self._dropped = False  # what the model wrote past the trigger fits no call: the reply ends

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (or a triggered call could not start): the
        generation ends here."""
        return self._dropped or (self.active and self._matcher.is_stopped())

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the grammar forbids now at -inf (a new array: the model's own
        logits stay as they were, for logprobs)."""
        if not self.active:
            return logits
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if m.is_error():
            raise BackendError(f"constrained decoding of {self.grammar.what} failed: {_plain(m.get_error())}")
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: logits.shape[-1]]
        return np.where(allowed.view(bool), logits, np.float32(-np.inf))

    def accept(self, token: int) -> None:
        """The token chosen (from masked logits): the grammar moves past it."""
        if self.active:
            if not self._matcher.consume_token(int(token)):
                raise BackendError(f"constrained decoding of {self.grammar.what} failed: "
                                   f"{_plain(self._matcher.get_error())}")
            return
        self._text += self._vocab.tokenizer.decode_bytes([int(token)])
        at = self._text.find(self._trigger)
        if at < 0:
            self._text = self._text[-len(self._trigger):]  # enough to find a trigger split between tokens
            return
        self.active = True
        rest = self._text[at + len(self._trigger):]  # a token may run past the trigger: the grammar starts
        # there
        if rest and not self._matcher.consume_tokens(self._vocab.tokenizer.tokenize_bytes(rest)):
            self._dropped = True  # no call starts so: the reply ends with its words, and no call

    def processor(self, input_ids: Any, logits: np.ndarray) -> np.ndarray:
        """mask() in the shape of llama-cpp-python's logits processors."""
        return self.mask(logits)


def vocab_from_tokenizer_json(text: str, width: int, end_ids: list[int]) -> ConstraintVocab:
    """The vocabulary of a tokenizers tokenizer.json (ONNX artifacts)."""
    llg = _llguidance()
    try:
        tokenizer = llg.LLTokenizer(text, n_vocab=width, eos_token=end_ids)
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"constrained decoding cannot read this tokenizer ({exc})") from None
    return ConstraintVocab(tokenizer, width)


def vocab_from_llama(vocab_ptr: Any, width: int, end_ids: list[int]) -> ConstraintVocab:
    """The vocabulary of a GGUF as llama.cpp loaded it: each token's bytes, control tokens marked as
    llguidance expects (a 0xFF byte before their text, so that no text can spell them), and llama.cpp's
    own tokenizer for the text a grammar forces. Tokens added as user-defined text (Qwen2.5's
    <tool_call>) stay text, as tokenizer.json has them on ONNX: a grammar's "<tool_call>" may be the one
    token the model was trained to write."""
    import ctypes

    import llama_cpp

    llg = _llguidance()
    buffer = ctypes.create_string_buffer(1024)
    control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    tokens = []
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab_ptr)):
        n = llama_cpp.llama_token_to_piece(vocab_ptr, token, buffer, len(buffer), 0, True)
        if n < 0:
            raise BackendError(f"constrained decoding cannot read token {token} of this vocabulary")
        piece = buffer.raw[:n]
        attr = llama_cpp.llama_vocab_get_attr(vocab_ptr, token)
        if attr & control:
            piece = b"\xff" + piece
        tokens.append(piece)
    tokens += [b""] * (width - len(tokens))  # logits wider than the vocabulary: never allowed
    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    try:
        tokenizer = llg.LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=vocab_ptr, tokenize_fptr=tokenize,
                                                  eos_token=end_ids)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise BackendError(f"constrained decoding cannot read this vocabulary ({exc})") from None
    return ConstraintVocab(tokenizer, width)


def schema_text(schema: dict[str, Any]) -> str:
    """A schema as the prompt states it: compact JSON."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))

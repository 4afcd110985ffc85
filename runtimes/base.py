"""The backend contract every runtime implements, and the options shared by all of them."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekit.errors import InvalidOptionError

if TYPE_CHECKING:
    from .constrain import Constraint, ConstraintVocab

# Prompts go into the model in chunks of this many tokens, at fixed positions (multiples of it): a
# prompt resumed from a cached prefix then computes exactly what a fresh one does, and a batch of
# streams keeps decoding between one prompt's chunks.
PREFILL_CHUNK = 256
_VOCAB_LOCK = threading.Lock()  # guards each backend's constraint vocabulary as it is made


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings; temperature 0 means greedy."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0  # OpenAI's: minus count x this from a recent token's logit
    presence_penalty: float = 0.0  # OpenAI's: minus this from the logit of any recent token
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    ignore_eos: bool = False  # run to max_tokens past the end-of-generation token (benchmarks)
    # log-probabilities: None for none; N for each chosen token's and its N likeliest alternatives'
    logprobs: int | None = None
    grammar: Any = None  # a constrain.Grammar: tokens it forbids are masked before each choice


    def __post_init__(self) -> None:
        checks = [(self.max_tokens >= 1, "max_tokens must be at least 1"),
                  (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
                  (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
                  (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
                  (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
                  (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
                  (self.logprobs is None or (type(self.logprobs) is int and 0 <= self.logprobs <= MAX_TOP),
                   f"logprobs must be None or a whole number of alternatives from 0 to {MAX_TOP}")]
        if self.grammar is not None:
            from .constrain import Grammar

            checks.append((isinstance(self.grammar, Grammar), "grammar must be a constrain.Grammar "
                           "(response_format and tools make one)"))
            checks.append((not self.ignore_eos, "ignore_eos cannot be combined with a response_format or "
                           "tools: a reply held to a grammar ends when the grammar does"))
        for ok, message in checks:
            if not ok:
                raise InvalidOptionError(message)


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    piece: bytes  # raw bytes: one token can end mid UTF-8 character
    # with options.logprobs: the token's log-probability under the model (before any sampling
    # setting), and the likeliest tokens' (id, log-probability), most likely first
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


MAX_TOP = 20  # alternatives per token, as OpenAI's top_logprobs allows


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """log-softmax of raw logits: the chosen token's value and the `top` likeliest (id, value)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max()
    logp = z - (m + np.log(np.exp(z - m).sum()))
    best: tuple[tuple[int, float], ...] = ()
    if top:
        idx = np.argpartition(-logp, top - 1)[:top] if top < logp.size else np.arange(logp.size)
        idx = idx[np.argsort(-logp[idx], kind="stable")]
        best = tuple((int(i), float(logp[i])) for i in idx)
    return float(logp[token]), best


class Backend(ABC):
    """One inference engine. Capabilities are class attributes so they can be listed without loading."""

    name: ClassVar[str]
    formats: ClassVar[frozenset[str]]  # artifact formats it runs ("gguf", "onnx")
    tasks: ClassVar[frozenset[str]]  # "text-generation", "feature-extraction"
    devices: ClassVar[frozenset[str]]  # devices it can be asked for ("cpu", "cuda", "apple")

    @classmethod
    def runtime_files(cls, manifest: dict[str, Any]) -> list[str]:
        """Files besides the model file that this backend opens; each must be in the hash list."""
        return []

    @classmethod
    def preflight(cls, model_file: Path, listed: set[str]) -> None:
        """Checks of the model file before native code opens it, which could abort the whole process
        on a bad one; `listed`: the artifact's hashed file names. Raises ArtifactError."""
        return None  # a format whose runtime checks its own input needs none

    @classmethod
    @abstractmethod
    def auto_device(cls) -> tuple[str, str]:
        """(device, why): what device="auto" picks on this machine, and the reason."""

    @classmethod
    @abstractmethod
    def device_report(cls) -> dict[str, Any]:
        """What this backend can use here: {"devices": [...], "auto": ..., "why": ...} and details."""

    parallel: int = 1  # streams decoded together (set_parallel)

    @abstractmethod
    def __init__(self, artifact: Path, manifest: dict[str, Any], device: str, n_ctx: int | None,
                 threads: int | None = None) -> None:
        """n_ctx: context window (None: the backend's default); threads: CPU threads (None: every core)."""

    def set_parallel(self, slots: int) -> None:
        """Decode up to `slots` streams together, the context window split between them (as llama.cpp's
        server splits -c among its slots); generate() may then run from several threads at once."""
        raise InvalidOptionError(f"{self.name} cannot decode several streams together "
                                 f"(parallel={slots}); use parallel=1")

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @abstractmethod
    def tokenize(self, text: str, add_special: bool) -> list[int]: ...

    @abstractmethod
    def is_end(self, token_id: int) -> bool: ...

    def token_bytes(self, token_id: int) -> bytes:
        """A token's text as raw bytes (a piece of a UTF-8 character, for some): what logprobs' likeliest
        alternatives are shown as. A backend without it cannot give those alternatives."""
        from edgekit.errors import BackendError

        raise BackendError(f"{self.name} cannot name a token's text, so logprobs' alternatives are not "
                           "available from it (logprobs=0 gives the chosen tokens' alone)")

    @abstractmethod
    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]: ...

    def constraint_vocab(self) -> ConstraintVocab:
        """The vocabulary constrained decoding masks (options.grammar), made on first use and kept."""
        with _VOCAB_LOCK:  # requests arriving together build it once
            vocab = getattr(self, "_constraint_vocab", None)
            if vocab is None:
                vocab = self._constraint_vocab = self._make_constraint_vocab()
            return vocab

    def _make_constraint_vocab(self) -> ConstraintVocab:
        from edgekit.errors import BackendError

        raise BackendError(f"{self.name} cannot constrain its decoding (structured output, tool calls) "
                           "for this artifact")

    def _start_constraint(self, options: GenerationOptions) -> Constraint | None:
        """The generation's constraint (None without a grammar): masks before each token, then accepts it."""
        return None if options.grammar is None else self.constraint_vocab().start(options.grammar)

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits [len(ids), vocab] of a text-generation model: row i is the
        distribution of the token after ids[:i + 1] (what verification compares)."""
        from edgekit.errors import BackendError

        raise BackendError(f"{self.name} has no next-token scores for this artifact (an embedding model?)")

    @abstractmethod
    def close(self) -> None: ...

"""edgekit.load(): open an artifact on a local backend and generate, chat or embed.

GGUF artifacts run through llama.cpp, ONNX ones through ONNX Runtime. The Engine adds what every
backend shares, once: the artifact's chat template (rendered in jinja2's sandbox, so both
backends see the same prompt text), stop strings, UTF-8-safe streaming, cancellation, one lock
so calls from several threads take turns, metrics (DESIGN.md section 7) and the latency budget.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import read_manifest
from .devices import llama_cpp_auto, onnxruntime_auto
from .errors import ArtifactError, ContextOverflowError, DeviceUnavailableError, InvalidOptionError
from .metrics import BudgetVerdict, DecodeMetrics, LatencyBudget

DEVICES = ("auto", "cpu", "cuda", "apple")


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (end token or stop string), "length" or "cancelled"
    metrics: DecodeMetrics
    budget: BudgetVerdict | None = None  # set when the engine has a LatencyBudget
    token_ids: tuple[int, ...] = ()  # the generated tokens (stop strings cut text, not these)

    # the headline numbers, straight from the metrics
    tokens_in = property(lambda self: self.metrics.tokens_in)
    tokens_out = property(lambda self: self.metrics.tokens_out)
    ttft_s = property(lambda self: self.metrics.ttft_s)
    decode_tok_s = property(lambda self: self.metrics.decode_tok_s)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason, **self.metrics.to_dict(),
                "budget": self.budget.to_dict() if self.budget else None}


class Stream:
    """Text pieces as they are generated; `.result` once exhausted; `.cancel()` from any thread."""

    def __init__(self, events: Iterator[str | GenerationResult], cancel: threading.Event) -> None:
        self._events, self._cancel = events, cancel
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        for event in self._events:
            if isinstance(event, GenerationResult):
                self.result = event
            else:
                yield event

    def cancel(self) -> None:
        self._cancel.set()


def load(path: str | Path, device: str = "auto", n_ctx: int | None = None,
         budget: LatencyBudget | None = None) -> Engine:
    """Open an artifact directory (verifying its files against edgekit.json) on a backend.

    device: "auto" picks the best device the backend really has, "cpu"/"cuda"/"apple" insist
    (an absent device is a DeviceUnavailableError, never a silent fallback). budget: checked on
    every call; each result says whether it was met and by how much.
    """
    root = Path(path)
    manifest = read_manifest(root)
    if device not in DEVICES:
        raise DeviceUnavailableError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    fmt = manifest.get("format")
    if fmt == "gguf":
        from edgekit.runtimes.llamacpp import LlamaCppBackend

        chosen = llama_cpp_auto()[0] if device == "auto" else device
        return Engine(root, manifest, LlamaCppBackend(root, manifest, chosen, n_ctx), chosen, budget)
    if fmt == "onnx":
        from edgekit.runtimes.onnxrt import OnnxEncoderBackend, OnnxRuntimeBackend

        chosen = onnxruntime_auto()[0] if device == "auto" else device
        kind = OnnxEncoderBackend if manifest.get("task") == "feature-extraction" else OnnxRuntimeBackend
        return Engine(root, manifest, kind(root, manifest, chosen, n_ctx), chosen, budget)
    raise ArtifactError(f"{root}: format '{fmt}' has no runtime")


class Engine:
    def __init__(self, root: Path, manifest: dict[str, Any], backend, device: str,
                 budget: LatencyBudget | None = None) -> None:
        self.path, self.manifest, self.backend, self.device, self.budget = root, manifest, backend, device, budget
        self._lock = threading.Lock()  # one native context: calls from several threads take turns
        self._running: threading.Event | None = None
        self._template = None

    # ---- text generation ------------------------------------------------------------------
    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.0, stream: bool = False,
                 stop: Sequence[str] = (), seed: int | None = None, add_special: bool = True,
                 **sampling: Any) -> GenerationResult | Stream:
        """Complete `prompt`. stream=True returns a Stream of text pieces; otherwise a GenerationResult.

        sampling: top_k, top_p, min_p, repeat_penalty, ignore_eos (GenerationOptions).
        """
        from edgekit.runtimes.base import GenerationOptions

        try:
            options = GenerationOptions(max_tokens=max_tokens, temperature=temperature, seed=seed, stop=tuple(stop),
                                        **sampling)
        except TypeError as exc:
            raise InvalidOptionError(f"unknown sampling option ({exc}); use top_k, top_p, min_p, repeat_penalty, ignore_eos") from None
        cancel = threading.Event()
        events = self._run(prompt, options, add_special, cancel)
        if stream:
            return Stream(events, cancel)
        return next(e for e in events if isinstance(e, GenerationResult))

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 128, temperature: float = 0.0,
             stream: bool = False, **kwargs: Any) -> GenerationResult | Stream:
        """Render the artifact's chat template and generate the assistant's reply."""
        prompt = self.render_chat(messages)
        # the template already wrote BOS if the model wants one
        return self.generate(prompt, max_tokens=max_tokens, temperature=temperature, stream=stream,
                             add_special=False, **kwargs)

    def cancel(self) -> None:
        """Stop the generation running now (from another thread); it ends with finish_reason "cancelled"."""
        running = self._running
        if running is not None:
            running.set()

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self._template is None:
            source = self.manifest.get("chat_template")
            if not source:
                raise ArtifactError(f"{self.path}: the artifact has no chat template; use generate() instead")
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(source)
        special = self.manifest.get("tokenizer", {})
        return self._template.render(messages=messages, add_generation_prompt=True,
                                     bos_token=special.get("bos_text", ""), eos_token=special.get("eos_text", ""))

    def _run(self, prompt: str, options, add_special: bool,
             cancel: threading.Event) -> Iterator[str | GenerationResult]:
        """Yield text pieces as they become final, then one GenerationResult."""
        with self._lock:
            self._running = cancel
            try:
                yield from self._generate_locked(prompt, options, add_special, cancel)
            finally:
                self._running = None

    def _generate_locked(self, prompt: str, options, add_special: bool,
                         cancel: threading.Event) -> Iterator[str | GenerationResult]:
        start = time.perf_counter()
        ids = self.backend.tokenize(prompt, add_special)
        limit = self.backend.context_length
        if len(ids) + options.max_tokens > limit:
            raise ContextOverflowError(len(ids), options.max_tokens, limit)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted, times, tokens, reason = "", 0, [], [], "stop"
        events = self.backend.generate(ids, options)
        longest = max((len(x) for x in options.stop), default=0)
        for event in events:
            times.append(time.perf_counter())
            tokens.append(event.token_id)
            before = len(text)
            text += decoder.decode(event.piece)
            # earlier text held no stop string: a new one must end in this piece (no rescan per token)
            cut = _stop_at(text, options.stop, max(0, before - longest + 1))
            if cut is not None:
                text = text[:cut]
                break
            safe = len(text) - _max_partial(text, options.stop)  # hold back a possible stop prefix
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if cancel.is_set():
                reason = "cancelled"
                break
        else:
            text += decoder.decode(b"", final=True)
            reason = "length" if len(times) >= options.max_tokens else "stop"
        events.close()  # release the backend's generator (and its native state) now
        if len(text) > emitted:
            yield text[emitted:]
        metrics = DecodeMetrics.from_times(start, times, time.perf_counter(), len(ids))
        verdict = self.budget.check(metrics) if self.budget else None
        yield GenerationResult(text, reason, metrics, verdict, tuple(tokens))

    # ---- embeddings ------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]):
        """One vector per text, pooled as the artifact says (e.g. mean for MiniLM)."""
        with self._lock:
            return self.backend.embed(list(texts))

    # ---- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_at(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    hits = [i for s in stops if s and (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def _max_partial(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best

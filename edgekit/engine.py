"""edgekit.load(): open an artifact on a local backend and generate, chat or embed.

This first version runs GGUF artifacts through llama.cpp; the Engine adds what every backend
shares: the artifact's chat template (rendered in jinja2's sandbox), stop strings, UTF-8-safe
streaming and timing metrics (DESIGN.md section 7 words).
"""

from __future__ import annotations

import codecs
import platform
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import read_manifest
from .errors import ArtifactError, ContextOverflowError, DeviceUnavailableError

DEVICES = ("auto", "cpu", "cuda", "apple")


@dataclass
class GenerationResult:
    text: str
    tokens_in: int
    tokens_out: int
    ttft_s: float  # request start to first generated token, tokenization included
    total_s: float
    finish_reason: str  # "stop" (end token or stop string) or "length"

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "ttft_s": round(self.ttft_s, 4), "total_s": round(self.total_s, 4),
                "decode_tok_s": round(self.decode_tok_s, 2), "finish_reason": self.finish_reason}

    @property
    def decode_tok_s(self) -> float:
        span = self.total_s - self.ttft_s
        return (self.tokens_out - 1) / span if self.tokens_out > 1 and span > 0 else 0.0


def load(path: str | Path, device: str = "auto", n_ctx: int | None = None) -> Engine:
    """Open an artifact directory (verifying its files against edgekit.json) on a backend."""
    root = Path(path)
    manifest = read_manifest(root)
    if device not in DEVICES:
        raise DeviceUnavailableError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    fmt = manifest.get("format")
    if fmt == "gguf":
        from edgekit.runtimes.llamacpp import LlamaCppBackend, gpu_offload_supported

        chosen = device
        if device == "auto":  # llama.cpp offloads to Metal on Apple Silicon, to CUDA elsewhere
            gpu = "apple" if sys.platform == "darwin" and platform.machine() == "arm64" else "cuda"
            chosen = gpu if gpu_offload_supported() else "cpu"
        return Engine(root, manifest, LlamaCppBackend(root, manifest, chosen, n_ctx), chosen)
    if fmt == "onnx":
        from edgekit.runtimes.onnxrt import PROVIDERS, OnnxRuntimeBackend, available_providers

        chosen = device
        if device == "auto":  # CoreML cannot run the contrib ops, so auto prefers CUDA, else CPU
            chosen = "cuda" if PROVIDERS["cuda"] in available_providers() else "cpu"
        return Engine(root, manifest, OnnxRuntimeBackend(root, manifest, chosen, n_ctx), chosen)
    raise ArtifactError(f"{root}: format '{fmt}' has no runtime")


class Engine:
    def __init__(self, root: Path, manifest: dict[str, Any], backend, device: str) -> None:
        self.path, self.manifest, self.backend, self.device = root, manifest, backend, device
        self._lock = threading.Lock()  # one native context: calls from several threads take turns
        self._template = None

    # ---- text generation ------------------------------------------------------------------
    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.0, stream: bool = False,
                 stop: Sequence[str] = (), seed: int | None = None, add_special: bool = True, **sampling: Any):
        """Complete `prompt`. stream=True yields text pieces; otherwise returns a GenerationResult."""
        from edgekit.runtimes.base import GenerationOptions

        options = GenerationOptions(max_tokens=max_tokens, temperature=temperature, seed=seed, stop=tuple(stop),
                                    **sampling)
        events = self._run(prompt, options, add_special)
        if stream:
            return (e for e in events if isinstance(e, str))
        return next(e for e in events if isinstance(e, GenerationResult))

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 128, temperature: float = 0.0,
             stream: bool = False, **kwargs: Any):
        """Render the artifact's chat template and generate the assistant's reply."""
        prompt = self.render_chat(messages)
        # the template already wrote BOS if the model wants one
        return self.generate(prompt, max_tokens=max_tokens, temperature=temperature, stream=stream,
                             add_special=False, **kwargs)

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

    def _run(self, prompt: str, options, add_special: bool) -> Iterator[str | GenerationResult]:
        """Yield text pieces as they become final, then one GenerationResult."""
        with self._lock:
            start = time.perf_counter()
            ids = self.backend.tokenize(prompt, add_special)
            limit = self.backend.context_length
            if len(ids) + options.max_tokens > limit:
                raise ContextOverflowError(len(ids), options.max_tokens, limit)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text, emitted, n_out, first, reason = "", 0, 0, None, "stop"
            for event in self.backend.generate(ids, options):
                n_out += 1
                first = first or time.perf_counter()
                text += decoder.decode(event.piece)
                cut = _stop_at(text, options.stop)
                if cut is not None:
                    text = text[:cut]
                    break
                safe = len(text) - _max_partial(text, options.stop)  # hold back a possible stop prefix
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
            else:
                text += decoder.decode(b"", final=True)
                reason = "length" if n_out >= options.max_tokens else "stop"
            if len(text) > emitted:
                yield text[emitted:]
            end = time.perf_counter()
            yield GenerationResult(text, len(ids), n_out, (first or end) - start, end - start, reason)

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


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
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

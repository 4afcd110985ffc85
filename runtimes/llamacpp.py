"""llama.cpp backend for GGUF artifacts, through llama-cpp-python (CPU; CUDA/Metal by GPU offload)."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendError, DeviceUnavailableError, InvalidOptionError, require

from .base import PREFILL_CHUNK, Backend, GenerationOptions, TokenEvent, token_logprobs


def gpu_offload_supported() -> bool:
    llama_cpp = require("llama_cpp", "llama-cpp-python", "llama", "Running GGUF artifacts")
    return bool(llama_cpp.llama_supports_gpu_offload())


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    formats = frozenset({"gguf"})
    tasks = frozenset({"text-generation", "feature-extraction"})
    devices = frozenset({"cpu", "cuda", "apple"})

    @classmethod
    def preflight(cls, model_file: Path, listed: set[str]) -> None:
        from .gguf_preflight import preflight

        preflight(model_file)  # what would abort llama.cpp

    @classmethod
    def auto_device(cls) -> tuple[str, str]:
        """llama.cpp offloads to Metal on Apple Silicon, to CUDA elsewhere, when the build can."""
        if gpu_offload_supported():
            apple = sys.platform == "darwin" and platform.machine() == "arm64"
            return ("apple" if apple else "cuda"), "GPU offload compiled in"
        return "cpu", "this build has no GPU offload"

    @classmethod
    def device_report(cls) -> dict[str, Any]:
        auto, why = cls.auto_device()
        return {"devices": ["cpu"] if auto == "cpu" else ["cpu", auto], "auto": auto, "why": why}

    def __init__(self, artifact: Path, manifest: dict[str, Any], device: str, n_ctx: int | None,
                 threads: int | None = None) -> None:
        llama_cpp = require("llama_cpp", "llama-cpp-python", "llama", "Running GGUF artifacts")
        if device != "cpu" and not gpu_offload_supported():
            raise DeviceUnavailableError(
                f"device '{device}' asked for, but this llama-cpp-python build has no GPU offload; "
                "reinstall it with CMAKE_ARGS for CUDA or Metal, or use device='cpu'"
            )
        self._embedding = manifest.get("task") == "feature-extraction"
        self._normalize = bool((manifest.get("pooling") or {}).get("normalize"))
        path = artifact / manifest["model_file"]
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx or min(int(manifest.get("context_length") or 2048), 4096),
                n_gpu_layers=0 if device == "cpu" else -1, embedding=self._embedding, verbose=False,
                n_threads=threads or max(1, os.cpu_count() or 1),
                n_threads_batch=threads or max(1, os.cpu_count() or 1),
                n_batch=PREFILL_CHUNK,  # prompts go in batches of this: a cached prefix resumes on an edge
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{path}: llama.cpp could not load the model ({exc})") from exc
        self._vocab = self._llm._model.vocab  # looked up once: is_end runs on every token
        self._edge = 0  # the last prompt's tokens in whole chunks: what a next prompt may resume from
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._pieces: dict[int, bytes] = {}

    @property
    def context_length(self) -> int:
        return self._batcher.window if self.parallel > 1 else int(self._llm.n_ctx())

    def set_parallel(self, slots: int) -> None:
        from .batching import stream_window
        from .llama_batch import LlamaBatcher

        if slots == self.parallel:
            return
        if self._embedding:
            raise InvalidOptionError(f"parallel={slots}: an embedding model embeds a list in one call; "
                                     "use parallel=1")
        n_ctx = int(self._llm.n_ctx())
        stream_window(self.parallel, slots, n_ctx)
        self._batcher = LlamaBatcher(self, slots, n_ctx)  # first: a failed context changes nothing
        self.parallel = slots

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def is_end(self, token_id: int) -> bool:
        return bool(self._is_eog(self._vocab, token_id))

    def _make_constraint_vocab(self):
        from .constrain import vocab_from_llama

        width = int(self._llm.n_vocab())
        return vocab_from_llama(self._vocab, width, [i for i in range(width) if self.is_end(i)])

    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        if self.parallel > 1:
            return self._batcher.generate(prompt_ids, options)
        return self._generate_alone(prompt_ids, options)

    def _generate_alone(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        if options.seed is not None:
            self._llm.set_seed(options.seed)
        count = 0
        constraint = self._start_constraint(options)  # masks through llama-cpp-python's logits processor
        greedy = options.temperature <= 0  # top_k=1 spares llama.cpp's sampler a sort per token
        ids = list(prompt_ids)
        # The cache keeps the last prompt's whole chunks of n_batch (PREFILL_CHUNK) tokens, computed as
        # a fresh prompt computes them; a prompt resumes from the longest common prefix within them, cut
        # to a chunk's edge, so the rest goes through llama.cpp in the very batches a fresh prompt's
        # would and gives the same bits. (llama-cpp-python's own reuse also keeps tokens evaluated one
        # at a time, and evaluates the rest in other batches, down to a lone last token; llama.cpp's
        # kernels round one token differently from a batch, so a cached prompt's answer could differ.)
        # A recurrent or hybrid model's state cannot be cut back: it always starts afresh.
        llm = self._llm
        reusable = 0 if getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False) else min(
            self._edge, llm.n_tokens, len(ids) - 1)
        n, cached = 0, llm.input_ids
        while n < reusable and cached[n] == ids[n]:
            n += 1
        llm.n_tokens = n - n % llm.n_batch  # eval drops the cache past it
        if llm.n_tokens == 0:
            llm.reset()
        self._edge = len(ids) - len(ids) % llm.n_batch  # this prompt's whole chunks
        for token in llm.generate(
            ids[llm.n_tokens:], temp=options.temperature, top_k=1 if greedy else options.top_k,
            top_p=options.top_p, min_p=options.min_p, repeat_penalty=options.repeat_penalty,
            frequency_penalty=options.frequency_penalty, presence_penalty=options.presence_penalty,
            reset=False, logits_processor=None if constraint is None else [constraint.processor],
        ):
            if not options.ignore_eos and self.is_end(token):
                return
            if constraint is not None:
                constraint.accept(token)
            if options.logprobs is None:
                yield TokenEvent(int(token), self._piece(token))
            else:  # the logits it was sampled from are still the context's last row
                row = np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(self._llm.n_vocab(),))
                yield TokenEvent(int(token), self._piece(token), *token_logprobs(row, int(token),
                                                                                  options.logprobs))
            count += 1
            if count >= options.max_tokens or (constraint is not None and constraint.finished):
                return

    def score(self, ids: Sequence[int]) -> np.ndarray:
        if self.parallel > 1:
            raise BackendError("scoring needs an engine of one stream (parallel=1); this one decodes "
                               f"{self.parallel} streams together")
        llm = self._llm
        if len(ids) > llm.n_ctx():
            raise BackendError(f"{len(ids)} tokens do not fit the context window of {llm.n_ctx()}")
        vocab, step = llm.n_vocab(), llm.n_batch
        out = np.empty((len(ids), vocab), dtype=np.float32)
        llm.reset()  # the next eval starts at position 0 and drops what the cache held
        self._edge = 0
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        try:  # llama-cpp-python's eval keeps only the last row unless the model was opened with
            # logits_all; its batch can ask for every row, one n_batch chunk at a time
            for start in range(0, len(ids), step):
                chunk = list(ids[start : start + step])
                llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
                llm._ctx.decode(llm._batch)
                rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk) * vocab,))
                out[start : start + len(chunk)] = rows.reshape(len(chunk), vocab)
        finally:
            llm.reset()
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        return out

    def token_bytes(self, token_id: int) -> bytes:
        return self._piece(token_id)

    def _piece(self, token: int) -> bytes:
        """A token's bytes, looked up once per vocabulary entry (this runs on every decoded token)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._llm.detokenize([token], special=False)
        return piece

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not self._embedding:
            raise BackendError("this artifact is a text-generation model; "
                               "embeddings need a feature-extraction one")
        # llama.cpp pools as the GGUF says; normalization follows the sentence-transformers config
        return np.asarray(self._llm.embed(list(texts), normalize=self._normalize), dtype=np.float32)

    def close(self) -> None:
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.close()
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()

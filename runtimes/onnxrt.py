"""ONNX Runtime backend for edgekit's ONNX decoders (CPU, CUDA, CoreML execution providers).

The decode loop is written for speed: one KV buffer per layer, [1, kv_heads, n_ctx, head_dim],
allocated once and bound as both past and present (GroupQueryAttention appends in place); the
attention mask is a view of a preallocated row of ones, as wide as the current length, so that
attention never scans the unused tail of the buffer; the prompt in one pass; IO binding so that
only the logits cross back into Python each step.

Graphs exported by optimum (manifest onnx.kv_layout "concat") return present = past + new tokens;
each step binds the previous step's present OrtValues as its past, on the device, with no copy in
Python (the graph's own Concat is the copy that layout costs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendError, DeviceUnavailableError, InvalidOptionError, require

from .base import PREFILL_CHUNK, Backend, GenerationOptions, TokenEvent, token_logprobs
from .sampling import Sampler
from .text import TextTokenizer

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "apple": "CoreMLExecutionProvider"}


def available_providers() -> list[str]:
    ort = require("onnxruntime", "onnxruntime", "onnx", "Running ONNX artifacts")
    return list(ort.get_available_providers())


def _session(artifact: Path, manifest: dict[str, Any], device: str, threads: int | None = None):
    """An InferenceSession on exactly the provider asked for (onnxruntime itself would fall back)."""
    ort = require("onnxruntime", "onnxruntime", "onnx", "Running ONNX artifacts")
    provider = PROVIDERS[device]
    if provider not in available_providers():
        raise DeviceUnavailableError(
            f"device '{device}' asked for, but onnxruntime here has no {provider} "
            f"(available: {', '.join(available_providers())}); "
            "install the matching onnxruntime build or use device='cpu'"
        )
    options = ort.SessionOptions()
    env_threads = int(os.environ.get("EDGEKIT_THREADS", 0))
    options.intra_op_num_threads = threads or env_threads or (os.cpu_count() or 1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = artifact / manifest["model_file"]
    try:
        sess = ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BackendError(f"{path}: onnxruntime could not load it ({exc})") from exc
    if sess.get_providers()[0] != provider:
        raise DeviceUnavailableError(
            f"onnxruntime could not start {provider} for {artifact} (it offered {sess.get_providers()}); "
            "use device='cpu' or fix the provider's installation"
        )
    return sess, ort


class _OnnxBackend(Backend):
    """What edgekit's decoder and encoder backends share: the session's facts and the tokenizer."""

    name = "onnxruntime"
    formats = frozenset({"onnx"})
    devices = frozenset(PROVIDERS)

    @classmethod
    def runtime_files(cls, manifest: dict[str, Any]) -> list[str]:
        return ["tokenizer.json"]  # ONNX graphs carry no tokenizer

    @classmethod
    def preflight(cls, model_file: Path, listed: set[str]) -> None:
        from .onnx_preflight import check_external_data

        check_external_data(model_file.parent, model_file.name, listed)

    @classmethod
    def auto_device(cls) -> tuple[str, str]:
        """CUDA when its provider loads; CoreML lacks the fused decoder ops, so auto never picks it."""
        if PROVIDERS["cuda"] in available_providers():
            return "cuda", "CUDAExecutionProvider available"
        return "cpu", "no CUDA provider (CoreML lacks the fused decoder ops, so auto never picks it)"

    @classmethod
    def device_report(cls) -> dict[str, Any]:
        providers = available_providers()
        auto, why = cls.auto_device()
        return {"devices": [d for d, p in PROVIDERS.items() if p in providers], "providers": providers,
                "auto": auto, "why": why}
    _n_ctx: int
    _tok: TextTokenizer

    @property
    def context_length(self) -> int:
        return self._n_ctx

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._tok.encode(text, add_special)


class OnnxRuntimeBackend(_OnnxBackend):
    tasks = frozenset({"text-generation"})

    def __init__(self, artifact: Path, manifest: dict[str, Any], device: str, n_ctx: int | None,
                 threads: int | None = None) -> None:
        self._sess, ort = _session(artifact, manifest, device, threads)
        facts = manifest.get("onnx") or {}
        try:
            self._layers, self._kv_heads, self._head_dim = (facts["num_layers"], facts["num_kv_heads"],
                                                            facts["head_dim"])
        except KeyError as exc:
            raise BackendError(f"{artifact}: edgekit.json lacks the ONNX decoder facts ({exc})") from exc
        self._n_ctx = min(n_ctx or 4096, int(facts.get("context_length") or 4096))
        self._vocab = int(facts["vocab_size"])
        self._kv_type = np.float16 if facts.get("kv_dtype") == "float16" else np.float32
        self._ort = ort
        self._tok = TextTokenizer(artifact / "tokenizer.json")
        self._tokenizer_file = artifact / "tokenizer.json"
        special = (manifest.get("tokenizer") or {}).get("special_ids") or {}
        eos = special.get("eos")
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._device = "cuda" if device == "cuda" else "cpu"
        self._layout = facts.get("kv_layout", "shared")
        if self._layout not in ("shared", "concat"):
            raise BackendError(f"{artifact}: unknown onnx.kv_layout '{self._layout}' in edgekit.json")
        names = {i.name for i in self._sess.get_inputs()}
        self._positions = np.arange(self._n_ctx, dtype=np.int64)[None] if "position_ids" in names else None
        # our graphs take how many logits rows to compute (one when generating); other exports give all
        self._keep_rows = "logits_to_keep" in names
        self._last_row = np.ones(1, dtype=np.int64)
        shape = (1, self._kv_heads, self._n_ctx if self._layout == "shared" else 0, self._head_dim)
        self._kv = [ort.OrtValue.ortvalue_from_shape_and_type(shape, self._kv_type, self._device)
                    for _ in range(2 * self._layers)]  # concat layout: the empty past of the first step
        self._ones = np.ones((1, self._n_ctx), dtype=np.int64)
        self._one_token = np.zeros((1, 1), dtype=np.int64)  # reused input_ids for decode steps
        self._cached: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self._edge = 0  # the last prompt's tokens in whole chunks: what a next prompt may resume from
        self._kv_names = [f"past_key_values.{i}.{kind}"
                          for i in range(self._layers) for kind in ("key", "value")]
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._kv_names]

    def is_end(self, token_id: int) -> bool:
        return token_id in self._eos

    def _make_constraint_vocab(self):
        from .constrain import vocab_from_tokenizer_json

        return vocab_from_tokenizer_json(self._tokenizer_file.read_text(encoding="utf-8"), self._vocab,
                                         sorted(self._eos))

    def set_parallel(self, slots: int) -> None:
        from .batching import stream_window
        from .onnx_batch import OnnxBatcher

        if slots == self.parallel:
            return
        why = ("it runs on the CPU only for now" if self._device != "cpu" else
               "it needs edgekit's own decoder graph (this one was exported by another tool)"
               if self._layout != "shared" or not self._keep_rows else None)
        if why is not None:
            raise InvalidOptionError(f"parallel={slots}: decoding several streams together is not "
                                     f"available for this artifact ({why}); use parallel=1")
        window = stream_window(self.parallel, slots, self._n_ctx)
        self._batcher = OnnxBatcher(self, slots, window)  # first: a failed allocation changes nothing
        self._n_ctx, self.parallel = window, slots
        self._kv, self._cached = [], []  # the rows of the batch hold the caches now

    def _step(self, binding, ids: Sequence[int], length: int, logits) -> np.ndarray:
        """Run tokens `ids`, the cache then holding `length` tokens; return the last logits row.

        logits: a preallocated [1, 1, vocab] OrtValue for single-token steps, or None to let
        onnxruntime allocate the prompt's (its last row only, where the graph can say so).
        """
        if len(ids) == 1:
            self._one_token[0, 0] = ids[0]
            binding.bind_cpu_input("input_ids", self._one_token)
        else:
            binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", self._ones[:, :length])
        if self._positions is not None:
            binding.bind_cpu_input("position_ids", self._positions[:, length - len(ids) : length])
        if logits is None:
            binding.bind_output("logits", "cpu")
        else:
            binding.bind_ortvalue_output("logits", logits)
        self._sess.run_with_iobinding(binding)
        if self._layout == "concat":  # this step's present is the next step's past
            outputs = binding.get_outputs()
            for n, value in enumerate(outputs[len(outputs) - 2 * self._layers:]):
                binding.bind_ortvalue_input(self._kv_names[n], value)
                binding.bind_output(self._present_names[n], self._device)  # a fresh, longer one next step
            logits = logits if logits is not None else outputs[0]
        elif logits is None:
            logits = binding.get_outputs()[0]
        return logits.numpy()[0, -1]

    def token_bytes(self, token_id: int) -> bytes:
        return self._tok.token_bytes(token_id)

    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        if self.parallel > 1:
            return self._batcher.generate(prompt_ids, options)
        return self._generate_alone(prompt_ids, options)

    def _generate_alone(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        binding = self._sess.io_binding()
        binding.bind_output("logits", "cpu")  # bound first: get_outputs()[0] is the logits
        step_logits = self._ort.OrtValue.ortvalue_from_shape_and_type((1, 1, self._vocab), np.float32, "cpu")
        for i in range(self._layers):  # shared: past and present are one buffer, nothing copied per token
            for j, kind in enumerate(("key", "value")):
                buf = self._kv[2 * i + j]
                binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", buf)
                if self._layout == "shared":
                    binding.bind_ortvalue_output(f"present.{i}.{kind}", buf)
                else:
                    binding.bind_output(f"present.{i}.{kind}", self._device)
        if self._keep_rows:
            binding.bind_cpu_input("logits_to_keep", self._last_row)
        sampler = Sampler(options)
        constraint = self._start_constraint(options)
        history = list(prompt_ids)
        keep = self._reusable(history)
        self._cached = history[:keep]  # what the cache holds, kept up to date as tokens go in
        self._edge = len(history) - len(history) % PREFILL_CHUNK  # this prompt's whole chunks
        # the prompt in chunks at fixed positions (multiples of PREFILL_CHUNK), so that one resumed
        # from a kept prefix computes exactly what a fresh one does
        for start in range(keep, len(history), PREFILL_CHUNK):
            chunk = history[start : start + PREFILL_CHUNK]
            logits = self._step(binding, chunk, start + len(chunk), None)
            self._cached += chunk
        for count in range(1, options.max_tokens + 1):
            choose = logits if constraint is None else constraint.mask(logits)
            token = sampler(choose, history[len(prompt_ids):])  # penalties: the answer's tokens only
            if not options.ignore_eos and self.is_end(token):
                return
            if constraint is not None:
                constraint.accept(token)
            if options.logprobs is None:
                yield TokenEvent(token, self._tok.token_bytes(token))
            else:
                yield TokenEvent(token, self._tok.token_bytes(token),
                                 *token_logprobs(logits, token, options.logprobs))
            history.append(token)
            if count == options.max_tokens or len(history) >= self._n_ctx:  # no step for a token unused
                return
            if constraint is not None and constraint.finished:  # the grammar allows nothing more
                return
            logits = self._step(binding, [token], len(history), step_logits)
            self._cached.append(token)

    def _reusable(self, ids: list[int]) -> int:
        """How many leading tokens of `ids` the cache already holds, computed as a fresh prompt computes
        them (the last prompt's whole chunks: not its last partial chunk, nor the answer's tokens, run
        one at a time), cut to a chunk's edge, and short of the whole prompt (its last chunk must run
        for the logits)."""
        if self._layout != "shared":  # another tool's graph: its cache is not kept between calls
            return 0
        n, most = 0, min(self._edge, len(self._cached), len(ids) - 1)
        while n < most and self._cached[n] == ids[n]:
            n += 1
        return n - n % PREFILL_CHUNK

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """The whole sequence in one pass over an empty cache; the decode buffers are left alone."""
        if len(ids) > self._n_ctx:
            raise BackendError(f"{len(ids)} tokens do not fit the context window of {self._n_ctx}")
        n = len(ids)
        feeds: dict[str, np.ndarray] = {"input_ids": np.asarray([ids], dtype=np.int64),
                                        "attention_mask": self._ones[:, :n]}
        if self._positions is not None:
            feeds["position_ids"] = self._positions[:, :n]
        empty = np.zeros((1, self._kv_heads, 0, self._head_dim), dtype=self._kv_type)
        feeds.update({name: empty for name in self._kv_names})
        if self._keep_rows:
            feeds["logits_to_keep"] = np.array([n], dtype=np.int64)
        return np.asarray(self._sess.run(["logits"], feeds)[0][0], dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise BackendError("this ONNX artifact is a text-generation model; "
                           "embeddings need a feature-extraction one")

    def close(self) -> None:
        self._sess = None
        self._kv = []


class OnnxEncoderBackend(_OnnxBackend):
    """Embeddings from an edgekit ONNX encoder: batch, run, pool and normalize as the manifest says."""

    tasks = frozenset({"feature-extraction"})

    def __init__(self, artifact: Path, manifest: dict[str, Any], device: str, n_ctx: int | None,
                 threads: int | None = None) -> None:
        self._sess, self._ort = _session(artifact, manifest, device, threads)
        facts = manifest.get("onnx") or {}
        self._n_ctx = min(n_ctx or 512, int(facts.get("context_length") or 512))
        self._pooling = facts.get("pooling") or {"mode": "mean", "normalize": False}
        self._inputs = {i.name for i in self._sess.get_inputs()}  # DistilBERT has no token_type_ids
        self._tok = TextTokenizer(artifact / "tokenizer.json")

    def is_end(self, token_id: int) -> bool:
        return False

    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        raise BackendError("this ONNX artifact is an embedding model; use embed(), not generate()")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self._tok.encode(t, True)[: self._n_ctx] for t in texts]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._sess.run(["last_hidden_state"],
                                {k: v for k, v in feeds.items() if k in self._inputs})[0]
        if self._pooling.get("mode") == "cls":
            vectors = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            vectors = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        if self._pooling.get("normalize"):
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32)

    def close(self) -> None:
        self._sess = None

"""verify(): what a conversion lost, measured against the best reference available, and a gate.

References, best first: the source checkpoint in transformers at fp32 (when torch and transformers
are installed), else edgekit's own fp32 build of the same checkpoint in the same format, made in a
temporary folder (no torch needed). Decoders are compared teacher-forced on edgekit's evaluation
text (edgekit/eval_text.py, never the calibration text): KL of next-token distributions (mean, p99,
max), top-1 agreement, perplexity of both, and where greedy generations first part. Embedders:
cosine of each sentence's vector against the reference's. The tokenizers must agree token for token.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifact import MANIFEST
from edgekit.errors import (
    InvalidOptionError,
    SourceError,
    VerificationError,
)
from edgekit.progress import Progress, no_progress
from edgekit.quality import eval_text

# The gate's defaults per quantization label: mean KL at most; top-1 agreement at least where the
# reference is confident (decoders); mean cosine at least (embedders). Measured on SmolLM2-135M and
# all-MiniLM-L6-v2 (int8: KL 0.005-0.006, confident top-1 1.0, cosine 0.9996; int4: KL 0.079-0.087,
# confident top-1 0.97-0.99, cosine 0.988-0.991), with room for other students: a broken conversion
# lands orders of magnitude away (docs/measurements.md, "Verification gate").
GATES: dict[str, dict[str, float]] = {
    "fp32": {"max_kl": 0.001, "min_top1": 0.99, "min_cosine": 0.9999},
    "fp16": {"max_kl": 0.005, "min_top1": 0.98, "min_cosine": 0.999},
    "bf16": {"max_kl": 0.02, "min_top1": 0.97, "min_cosine": 0.998},
    "int8": {"max_kl": 0.03, "min_top1": 0.95, "min_cosine": 0.995},
    "int6": {"max_kl": 0.06, "min_top1": 0.93, "min_cosine": 0.99},
    "int5": {"max_kl": 0.12, "min_top1": 0.90, "min_cosine": 0.985},
    "int4": {"max_kl": 0.30, "min_top1": 0.85, "min_cosine": 0.95},
    "int3": {"max_kl": 0.60, "min_top1": 0.75, "min_cosine": 0.90},
    "int2": {"max_kl": 1.50, "min_top1": 0.60, "min_cosine": 0.85},
}
REFERENCE_KINDS = ("auto", "transformers", "edgekit")
# top-1 agreement is gated where the reference's top token has at least this probability (at near
# ties any rounding flips the top token without the model being any worse), and only over enough
# such positions to mean something
CONFIDENT, MIN_CONFIDENT_POSITIONS = 0.5, 16
MAX_TOKENS = 256  # evaluation tokens scored (fewer when the context window is smaller)
GREEDY_PROMPT, GREEDY_TOKENS = 16, 16


@dataclass
class FidelityReport:
    artifact: str
    task: str
    label: str  # the quantization label graded ("int4")
    reference: dict[str, Any]  # kind ("transformers" or "edgekit-fp32"), what it is, and why
    eval_text: dict[str, Any]  # name, sha256, tokens or sentences, calibrated_on (always False)
    metrics: dict[str, Any]
    thresholds: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FidelityReport:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def rows(self) -> list[tuple[str, str, str]]:
        """(metric, value, threshold) for a table."""
        m, t = self.metrics, self.thresholds
        if self.task == "feature-extraction":
            return [("sentences", str(m["sentences"]), ""),
                    ("cosine mean", f"{m['cosine_mean']:.5f}", f">= {t['min_cosine']}"),
                    ("cosine min", f"{m['cosine_min']:.5f}", "")]
        diverge = m["greedy_divergence"]
        return [("tokens scored", str(m["positions"]), ""),
                ("tokenizer", "matches" if m["tokenizer_match"] else
                 f"differs at token {m['tokenizer_first_difference']}", "must match"),
                ("KL mean", f"{m['kl_mean']:.5f}", f"<= {t['max_kl']}"),
                ("KL p99", f"{m['kl_p99']:.4f}", ""), ("KL max", f"{m['kl_max']:.4f}", ""),
                ("top-1 agreement", f"{m['top1']:.4f}", ""),
                ("  where confident", _confident(m), f">= {t['min_top1']}"),
                ("perplexity", f"{m['ppl']:.3f} (reference {m['ppl_reference']:.3f})", ""),
                ("perplexity ratio", f"{m['ppl_ratio']:.4f}", ""),
                ("greedy divergence", "none in " + str(m["greedy_tokens"]) + " tokens" if diverge is None
                 else f"at token {diverge} of {m['greedy_tokens']}", "")]

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return f"fidelity against {self.reference['description']}: {verdict}"


def _confident(m: dict[str, Any]) -> str:
    n = m.get("confident_positions", 0)
    if n < MIN_CONFIDENT_POSITIONS:
        return f"not judged ({n} positions with p >= {CONFIDENT})"
    return f"{m['top1_confident']:.4f} over {n} positions"


def thresholds_for(label: str, max_kl: float | None = None, min_top1: float | None = None,
                   min_cosine: float | None = None) -> dict[str, float]:
    """The gate for a quantization label, with any given threshold overriding its default."""
    base = dict(GATES.get(label.lower(), GATES["int4"]))
    for name, value, low, high in (("max_kl", max_kl, 0.0, float("inf")), ("min_top1", min_top1, 0.0, 1.0),
                                   ("min_cosine", min_cosine, -1.0, 1.0)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise InvalidOptionError(f"{name} must be a number in [{low}, {high}], not {value!r}")
        base[name] = float(value)
    return base


# ---- metrics (pure numpy) --------------------------------------------------------------------
def logit_metrics(ours: np.ndarray, ref: np.ndarray, ids: Sequence[int]) -> dict[str, Any]:
    """Teacher-forced comparison of two [n, vocab] logit arrays over the same token ids: KL(ref || ours)
    per position (mean, p99, max), top-1 agreement and the perplexity of each on the text itself.
    Vocabularies padded to different widths are compared over the shared part."""
    n = min(len(ours), len(ref), len(ids))
    width = min(ours.shape[1], ref.shape[1])
    kl = np.empty(n)
    agree = confident = confident_agree = 0
    nll_ours = nll_ref = 0.0
    for start in range(0, n, 64):  # float64 rows in chunks: a 150k vocabulary stays small in memory
        stop = min(n, start + 64)
        lo = _log_softmax(ours[start:stop, :width])
        lr = _log_softmax(ref[start:stop, :width])
        kl[start:stop] = (np.exp(lr) * (lr - lo)).sum(axis=1)
        same = lo.argmax(axis=1) == lr.argmax(axis=1)
        sure = lr.max(axis=1) >= np.log(CONFIDENT)  # where the reference has made up its mind
        agree += int(same.sum())
        confident += int(sure.sum())
        confident_agree += int((same & sure).sum())
        nxt = np.asarray(ids[start + 1 : stop + 1], dtype=np.int64)  # the token each row predicts
        rows = np.arange(len(nxt))
        nll_ours -= float(lo[rows, nxt].sum())
        nll_ref -= float(lr[rows, nxt].sum())
    kl = np.maximum(kl, 0.0)  # rounding can leave -1e-17
    predicted = max(n - 1, 1)
    ppl, ppl_ref = float(np.exp(nll_ours / predicted)), float(np.exp(nll_ref / predicted))
    return {"positions": n, "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "kl_max": float(kl.max()), "top1": agree / n,
            "top1_confident": confident_agree / confident if confident else None,
            "confident_positions": confident,
            "ppl": ppl, "ppl_reference": ppl_ref, "ppl_ratio": ppl / ppl_ref}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where two sequences differ (or one ends); None when equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def cosine_metrics(ours: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    cos = (ours * ref).sum(1) / np.maximum(np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
    return {"sentences": len(cos), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def gate(task: str, metrics: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """The gate's failures, in words; empty when it passes."""
    failures = []
    if task == "feature-extraction":
        if not metrics["cosine_mean"] >= thresholds["min_cosine"]:
            failures.append(f"mean cosine {metrics['cosine_mean']:.5f} < {thresholds['min_cosine']}")
        return failures
    if not metrics["tokenizer_match"]:
        failures.append(f"the tokenizer differs from the reference's at token "
                        f"{metrics['tokenizer_first_difference']} of the evaluation text")
    if not metrics["kl_mean"] <= thresholds["max_kl"]:
        failures.append(f"mean KL {metrics['kl_mean']:.5f} > {thresholds['max_kl']}")
    sure, limit = metrics.get("top1_confident"), thresholds["min_top1"]
    if metrics.get("confident_positions", 0) >= MIN_CONFIDENT_POSITIONS and not sure >= limit:
        failures.append(f"top-1 agreement where the reference is confident {sure:.4f} < {limit}")
    return failures


# ---- references ------------------------------------------------------------------------------
class _TransformersReference:
    """The source checkpoint in transformers, fp32, eager attention (what the model's authors ran)."""

    kind = "transformers"

    def __init__(self, checkpoint: Path, task: str, pooling: dict[str, Any]) -> None:
        self.tokenizer, self.model = self.load(checkpoint, task)  # imports torch and transformers
        import inspect

        import torch
        import transformers

        self._torch, self._pooling = torch, pooling
        self.description = f"transformers {transformers.__version__} fp32 on {checkpoint.name}"

        self._inputs = set(inspect.signature(self.model.forward).parameters)

    @staticmethod
    def load(checkpoint: Path, task: str):
        """(tokenizer, model in eval mode), with transformers' progress bars and notices kept off
        the user's terminal."""
        from edgekit.quiet import quiet_third_party

        with quiet_third_party():  # their import-time notices too
            import torch
            import transformers

            tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
            embedder = task == "feature-extraction"
            auto = transformers.AutoModel if embedder else transformers.AutoModelForCausalLM
            model = auto.from_pretrained(str(checkpoint), dtype=torch.float32, attn_implementation="eager")
        model.eval()
        return tokenizer, model

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(self, ids: Sequence[int]) -> np.ndarray:
        with self._torch.no_grad():
            out = self.model(self._torch.tensor([list(ids)]))
        return out.logits[0].float().numpy()

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        torch = self._torch
        tokens, past = list(ids), None
        out: list[int] = []
        with torch.no_grad():  # step by step with the cache, never stopping at EOS (as ignore_eos)
            step = torch.tensor([tokens])
            for _ in range(n):
                result = self.model(step, past_key_values=past, use_cache=True)
                past = result.past_key_values
                token = int(result.logits[0, -1].argmax())
                out.append(token)
                step = torch.tensor([[token]])
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        rows = []
        with torch.no_grad():
            for text in texts:  # one at a time: no padding to mask
                batch = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
                batch = {k: v for k, v in batch.items() if k in self._inputs}  # DistilBERT: no token types
                hidden = self.model(**batch).last_hidden_state[0]
                vector = hidden[0] if self._pooling.get("mode") == "cls" else hidden.mean(0)
                if self._pooling.get("normalize"):
                    vector = vector / vector.norm().clamp(min=1e-12)
                rows.append(vector.float().numpy())
        return np.stack(rows)

    def close(self) -> None:
        self.model = None


class EdgekitReference:
    """edgekit's own unquantized build of the source in the artifact's format, run by the same backend."""

    kind = "edgekit-fp32"

    def __init__(self, engine, description: str) -> None:
        self.engine, self.description = engine, description

    @classmethod
    def from_file(cls, root: Path, manifest: dict[str, Any], model_file: str, what: str) -> EdgekitReference:
        """An unquantized GGUF already at hand: the file a conversion handed to llama.cpp's quantizer."""
        from edgekit.engine import open_checked

        return cls(open_checked(root, {**manifest, "model_file": model_file}, "cpu"), what)

    def tokenize(self, text: str) -> list[int]:
        return self.engine.backend.tokenize(text, False)

    def score(self, ids: Sequence[int]) -> np.ndarray:
        return self.engine.backend.score(ids)

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        return _greedy(self.engine.backend, ids, n)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.engine.embed(list(texts))

    def close(self) -> None:
        self.engine.close()


class StoredReference:
    """A reference's answers kept under the cache root (`references/`), by the source checkpoint's file
    hashes, what computes them (transformers and torch, or edgekit's own fp32 build: its format, code
    and runtime) and the question asked. The next artifact of the same checkpoint (another format or
    precision, a later `edgekit verify`) is graded without importing torch or building the reference,
    which opens only for a question not answered before."""

    def __init__(self, folder: Path, description: str, opener: Callable[[], Any],
                 kind: str = "transformers") -> None:
        self.folder, self.description, self._opener, self.kind = folder, description, opener, kind
        self._opened: Any = None

    @classmethod
    def for_source(cls, checkpoint: Path, manifest: dict[str, Any], task: str,
                   pooling: dict[str, Any]) -> StoredReference | None:
        """The transformers reference's store. None when the checkpoint cannot be named exactly: no
        file hashes in the manifest, or a hashed file missing from the folder given as the reference."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            versions = {name: version(name) for name in ("transformers", "torch")}
        except PackageNotFoundError:
            return None
        folder = _store_folder(checkpoint, manifest, {"versions": versions, "task": task, "pooling": pooling})
        if folder is None:
            return None
        description = f"transformers {versions['transformers']} fp32 on {checkpoint.name}"
        return cls(folder, description, lambda: _TransformersReference(checkpoint, task, pooling))

    @classmethod
    def for_edgekit(cls, checkpoint: Path, manifest: dict[str, Any], task: str, pooling: dict[str, Any],
                    description: str, opener: Callable[[], Any]) -> StoredReference | None:
        """The store of edgekit's own fp32 build in the artifact's format: named by the code that
        builds and runs it too, so that a changed converter or runtime never answers from the past."""
        from importlib.metadata import PackageNotFoundError, version

        fmt = str(manifest.get("format"))
        try:
            runtime = version("onnxruntime" if fmt == "onnx" else "llama_cpp_python")
        except PackageNotFoundError:
            runtime = "?"
        facts = {"kind": "edgekit-fp32", "format": fmt, "exporter": manifest.get("exporter"),
                 "code": _code_hash(), "runtime": runtime, "task": task, "pooling": pooling}
        folder = _store_folder(checkpoint, manifest, facts)
        return None if folder is None else cls(folder, description, opener, kind="edgekit-fp32")

    def seen(self) -> bool:
        return (self.folder / "opened").is_file()

    def holding(self, opened: Any) -> StoredReference:
        """This store over a reference already opened (its first answers are computed, then kept)."""
        self._opened, self.description = opened, opened.description
        self._write("opened", np.zeros(0))
        return self

    def _answer(self, question: str, compute: Callable[[Any], Any]) -> np.ndarray:
        name = hashlib.sha256(question.encode()).hexdigest()[:32]
        try:
            return np.load(self.folder / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError):
            pass
        if self._opened is None:
            self.holding(self._opener())
        value = np.asarray(compute(self._opened))
        self._write(name, value)
        return value

    def _write(self, name: str, value: np.ndarray) -> None:
        try:  # a full or read-only disk only costs the next run its speed
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = self.folder / f".{name}.{os.getpid()}.npy"
            np.save(partial, value, allow_pickle=False)
            os.replace(partial, self.folder / (name if name == "opened" else f"{name}.npy"))
        except OSError:
            pass

    def tokenize(self, text: str) -> list[int]:
        return self._answer(f"tokenize|{text}", lambda r: np.array(r.tokenize(text), np.int64)).tolist()

    def score(self, ids: Sequence[int]) -> np.ndarray:
        return self._answer(f"score|{list(ids)}", lambda r: r.score(ids))

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        answer = self._answer(f"greedy|{n}|{list(ids)}", lambda r: np.array(r.greedy(ids, n), np.int64))
        return answer.tolist()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._answer(f"embed|{json.dumps(list(texts))}", lambda r: r.embed(texts))

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()


def _store_folder(checkpoint: Path, manifest: dict[str, Any], facts: dict[str, Any]) -> Path | None:
    files = (manifest.get("source") or {}).get("files") or {}
    if not files or not all((checkpoint / name).is_file() for name in files):
        return None
    extra = {p.name: _small_file_hash(p) for p in sorted(checkpoint.glob("*.json"))
             if p.name not in files}  # special_tokens_map.json and the like: small, read by transformers
    identity = json.dumps({"files": files, "extra": extra, **facts}, sort_keys=True)
    from edgekit.cache import cache_root

    return cache_root() / "references" / hashlib.sha256(identity.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """The sources of edgekit's converters, runtimes and version: what an fp32 build's answers depend on."""
    import edgekit.converters
    import edgekit.runtimes
    from edgekit.version import __version__

    digest = hashlib.sha256(__version__.encode())
    for package in (edgekit.converters, edgekit.runtimes):
        for path in sorted(Path(next(iter(package.__path__))).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:32]


def _small_file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.stat().st_size < 1 << 24 else "large"


def _greedy(backend, ids: Sequence[int], n: int) -> list[int]:
    from edgekit.runtimes.base import GenerationOptions

    options = GenerationOptions(max_tokens=n, temperature=0.0, ignore_eos=True)
    return [event.token_id for event in backend.generate(list(ids), options)]


def _torch_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


# (checkpoint, manifest, workdir, why) -> edgekit's own fp32 build of the checkpoint in the
# artifact's format, opened; the conversion job supplies it (conversion.pipeline.edgekit_reference)
BuildReference = Callable[[Path, dict[str, Any], Path, str], EdgekitReference]


def _open_reference(kind: str, checkpoint: Path, manifest: dict[str, Any], workdir: Path,
                    build: BuildReference, at_hand: Callable[[], EdgekitReference] | None = None):
    """The reference of this kind; at_hand opens an unquantized build the caller already has, used
    instead of building one when the reference is edgekit's own."""
    task = str(manifest.get("task", "text-generation"))
    pooling = manifest.get("pooling") or (manifest.get("onnx") or {}).get("pooling") or {}
    if kind == "transformers" or (kind == "auto" and _torch_available()):
        stored = StoredReference.for_source(checkpoint, manifest, task, pooling)
        if stored is not None and stored.seen():  # answered before: the model opens only if asked more
            return stored
        try:
            opened = _TransformersReference(checkpoint, task, pooling)
            return stored.holding(opened) if stored is not None else opened
        except ImportError as exc:
            if kind == "transformers":
                raise VerificationError(f"reference 'transformers' asked for, but {exc}; install "
                                        "torch and transformers, or use reference_kind='edgekit'") from exc
            why = f" (transformers could not be imported: {exc})"
        except Exception as exc:  # transformers raises many kinds for a model it cannot load
            if kind == "transformers":
                raise VerificationError(f"{checkpoint}: transformers could not load it ({exc})") from exc
            why = f" (transformers could not load it: {type(exc).__name__})"
    else:
        why = "" if kind == "edgekit" else " (torch and transformers are not installed)"
    if at_hand is not None:  # the unquantized file a conversion has anyway: nothing to build
        return at_hand()
    description = f"edgekit's own fp32 {manifest.get('format')} build of {checkpoint.name}{why}"
    stored = StoredReference.for_edgekit(checkpoint, manifest, task, pooling, description,
                                         lambda: build(checkpoint, manifest, workdir, why))
    if stored is not None and stored.seen():  # built and asked before: nothing to build
        return stored
    opened = build(checkpoint, manifest, workdir, why)
    return stored.holding(opened) if stored is not None else opened


# ---- finding the source ----------------------------------------------------------------------
def find_source(manifest: dict[str, Any], artifact: Path, reference: str | os.PathLike[str] | None = None):
    """The checkpoint an artifact was converted from: `reference` when given, else the manifest's
    source (bundled:NAME or a hub id, through the local cache). Checked to be the same model."""
    from edgekit.converters.source import inspect

    source = manifest.get("source") or {}
    if reference is None:
        sid = source.get("id")
        if source.get("kind") == "gguf-file":  # wrapped, not converted: its checkpoint is not known
            raise VerificationError(f"{artifact}: a GGUF made outside edgekit ({sid}); pass the checkpoint "
                                    "it was made from to compare with (--reference DIR)")
        if not sid:
            raise VerificationError(f"{artifact}: {MANIFEST} names no source checkpoint; pass the checkpoint "
                                    "it was converted from (--reference DIR)")
        if str(sid).startswith("bundled:"):
            from edgekit import bundled

            reference = bundled.path(str(sid)[len("bundled:"):])
        else:  # a local folder is named by its name alone: this machine's record finds it by hashes
            from edgekit.cache import recall_source

            found = recall_source(source.get("files") or {}) if "/" not in str(sid) else None
            reference = found or sid
    try:
        ckpt = inspect(reference, revision=source.get("revision") if reference == source.get("id") else None,
                       allow_remote_code=True, allow_pickle=True)
    except SourceError as exc:
        hint = ("; it was converted from a local folder, so pass that folder with --reference"
                if reference == source.get("id") and "/" not in str(reference) else "")
        raise VerificationError(f"{artifact}: the reference checkpoint {reference!s} cannot be read "
                                f"({exc}){hint}") from exc
    _check_same_model(manifest, ckpt, artifact)
    return ckpt


def _check_same_model(manifest: dict[str, Any], ckpt, artifact: Path) -> None:
    from edgekit.artifact import sha256_file

    arch = manifest.get("architecture")
    if arch and ckpt.architecture != arch:
        raise VerificationError(f"{ckpt.path} is a {ckpt.architecture}, but {artifact} was converted from a "
                                f"{arch}: not the same model")
    expected = (manifest.get("source") or {}).get("files") or {}
    for name, digest in expected.items():
        if not ckpt.has(name):
            continue
        if sha256_file(ckpt.path / name) != digest:
            raise VerificationError(f"{ckpt.path / name} differs from the file {artifact} was converted "
                                    f"from (sha256): not the same checkpoint")
    vocab = ((manifest.get("onnx") or {}).get("vocab_size")
             or (manifest.get("tokenizer") or {}).get("vocab_size"))
    theirs = ckpt.config.get("vocab_size")
    if isinstance(vocab, int) and isinstance(theirs, int) and abs(vocab - theirs) > 1024:
        raise VerificationError(f"{ckpt.path}: vocabulary of {theirs} tokens, but {artifact} has {vocab}: "
                                "not the same model")


# ---- the check -------------------------------------------------------------------------------
def _evaluation(eval_file: str | os.PathLike[str] | None) -> tuple[str, dict[str, Any]]:
    if eval_file is None:
        text = eval_text.TEXT
        info: dict[str, Any] = {"name": eval_text.NAME}
    else:
        path = Path(eval_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidOptionError(f"{path}: no such evaluation file") from None
        except (UnicodeDecodeError, OSError) as exc:
            raise InvalidOptionError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
        if not text.strip():
            raise InvalidOptionError(f"{path}: the evaluation file is empty")
        info = {"name": path.name}
    info.update(sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), calibrated_on=_calibrated_on(text))
    return text, info


def _calibrated_on(text: str) -> bool:
    """Whether the text holds a sentence of the calibration text int4 conversion runs on (a model
    graded on it would look better than it is)."""
    import re

    from edgekit.converters.onnx_calibration import CALIBRATION_TEXT

    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+|\n", CALIBRATION_TEXT) if len(s.strip()) > 20]
    return any(sentence in text for sentence in sentences)


def check(path: Path, manifest: dict[str, Any], ckpt, *, reference_kind: str = "auto",
          eval_file: str | os.PathLike[str] | None = None, thresholds: dict[str, float] | None = None,
          device: str = "cpu", threads: int | None = None, progress: Progress | None = None,
          build_reference: BuildReference, at_hand: Callable[[], EdgekitReference] | None = None,
          ) -> FidelityReport:
    """Measure an artifact directory (finished or still staging) against `ckpt`, its source.
    `manifest` must already be checked against the files (read_manifest, or just written)."""
    from edgekit.engine import Engine, open_checked

    if reference_kind not in REFERENCE_KINDS:
        raise InvalidOptionError(f"unknown reference kind '{reference_kind}'; "
                                 f"use {', '.join(REFERENCE_KINDS)}")
    start = time.perf_counter()
    tick = progress or no_progress
    task = str(manifest.get("task", "text-generation"))
    label = str((manifest.get("quantization") or {}).get("label") or "int4")
    limits = thresholds or thresholds_for(label)
    text, info = _evaluation(eval_file)
    tick("verify", 0, 4)
    with tempfile.TemporaryDirectory(prefix="edgekit-verify-") as tmp:
        ref = _open_reference(reference_kind, ckpt.path, manifest, Path(tmp), build_reference, at_hand)
        try:
            tick("verify", 1, 4)
            engine: Engine = open_checked(path, manifest, device, None, threads)
            try:
                if task == "feature-extraction":
                    sentences = eval_text.SENTENCES if eval_file is None else _sentences(text)
                    info["sentences"] = len(sentences)
                    ours = engine.embed(sentences)
                    tick("verify", 2, 4)
                    metrics = cosine_metrics(ours, ref.embed(sentences))
                else:
                    metrics = _decoder_metrics(engine, ref, text, info, tick)
            finally:
                engine.close()
        finally:
            ref.close()
    tick("verify", 4, 4)
    failures = gate(task, metrics, limits)
    return FidelityReport(artifact=str(path), task=task, label=label,
                          reference={"kind": ref.kind, "description": ref.description,
                                     "source": (manifest.get("source") or {}).get("id")},
                          eval_text=info, metrics=metrics, thresholds=limits, passed=not failures,
                          failures=failures, seconds=round(time.perf_counter() - start, 2))


def _decoder_metrics(engine, ref, text: str, info: dict[str, Any], tick: Progress) -> dict[str, Any]:
    backend = engine.backend
    ours_plain, ref_plain = backend.tokenize(text, False), ref.tokenize(text)
    mismatch = first_difference(ours_plain, ref_plain)
    ids = backend.tokenize(text, True)[: min(MAX_TOKENS, backend.context_length)]
    info["tokens"] = len(ids)
    ours = backend.score(ids)
    tick("verify", 2, 4)
    metrics = logit_metrics(ours, ref.score(ids), ids)
    del ours
    prompt = ids[:GREEDY_PROMPT]
    n = max(1, min(GREEDY_TOKENS, backend.context_length - len(prompt)))
    tick("verify", 3, 4)
    metrics.update(tokenizer_match=mismatch is None, tokenizer_first_difference=mismatch,
                   greedy_divergence=first_difference(_greedy(backend, prompt, n), ref.greedy(prompt, n)),
                   greedy_tokens=n)
    return metrics


def _sentences(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[:64]


def record(path: Path, report: FidelityReport) -> None:
    """Write the report into the artifact's edgekit.json (atomically; the file hashes it lists stay valid:
    edgekit.json is not one of them)."""
    manifest_path = Path(path) / MANIFEST
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    data["fidelity"] = report.to_dict()
    data["fidelity"].pop("artifact", None)  # the folder may move; the report belongs to it wherever it is
    tmp = manifest_path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)

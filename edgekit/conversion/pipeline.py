"""convert(): one call from a Hugging Face checkpoint to a finished, verified-on-load artifact."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.artifact import (
    check_output,
    file_entry,
    output_lock,
    remove_stale_staging,
    staged_output,
    write_manifest,
)
from edgekit.errors import (
    ArtifactError,
    ConversionError,
    EdgekitError,
    Interrupted,
    TokenizerError,
    UnsupportedArchitectureError,
    require,
)
from edgekit.progress import Progress
from edgekit.signals import signals_as_interrupt
from edgekit.version import __version__

FORMATS = ("gguf", "onnx")
EXPORTERS = ("auto", "edgekit", "optimum")  # how the ONNX graph is made
# Side files every artifact carries so runtimes can render chat templates and read generation defaults.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
               "chat_template.jinja")
BUNDLED_PREFIX = "bundled:"


@dataclass
class ConversionResult:
    path: Path
    format: str
    quant: str  # scheme actually written, e.g. "Q4_K_M"
    label: str  # what was asked for in family words, e.g. "int4"
    architecture: str
    files: list[dict[str, Any]]
    size_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int]
    seconds: float
    exporter: str  # "edgekit" (our own graph/file writer) or "optimum-onnx" (the ONNX fallback path)
    manifest: dict[str, Any] = field(repr=False)
    note: str | None = None  # why bits_per_weight is well above the label's, when it is
    fidelity: Any = None  # the FidelityReport of the verification (None with verify=False)

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("manifest", "fidelity")}
        data["path"] = str(self.path)
        data["fidelity"] = self.fidelity.to_dict() if self.fidelity is not None else None
        return data



def _parse_formats(to: str | list[str] | tuple[str, ...]) -> list[str]:
    items = [p.strip().lower() for p in (to.split(",") if isinstance(to, str) else to) if p.strip()]
    if not items:
        raise ConversionError("no output format given; use to='gguf'")
    for item in items:
        if item not in FORMATS:
            raise ConversionError(f"unknown format '{item}'; supported: {', '.join(FORMATS)}")
    return list(dict.fromkeys(items))


def _resolve_bundled(source: str | os.PathLike[str]) -> str | os.PathLike[str]:
    if isinstance(source, str) and source.startswith(BUNDLED_PREFIX):
        from edgekit import bundled

        return bundled.path(source[len(BUNDLED_PREFIX):] or bundled.DEFAULT)
    return source


def _basename(source: str | os.PathLike[str], ckpt_path: Path) -> str:
    text = str(source)
    name = (text[len(BUNDLED_PREFIX):] if text.startswith(BUNDLED_PREFIX)
            else Path(text).name or ckpt_path.name)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "model"


def convert(
    source: str | os.PathLike[str],
    to: str | list[str] = "gguf",
    quant: str = "int4",
    output: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    revision: str | None = None,
    allow_remote_code: bool = False,
    allow_pickle: bool = False,
    exporter: str = "auto",
    progress: Progress | None = None,
    verify: bool = True,
    keep_failed: bool = False,
    reference_kind: str = "auto",
    eval_file: str | os.PathLike[str] | None = None,
    max_kl: float | None = None,
    min_top1: float | None = None,
    min_cosine: float | None = None,
) -> ConversionResult | list[ConversionResult]:
    """Convert a Hugging Face checkpoint (directory, hub id or 'bundled:NAME') into artifacts.

    to: "gguf", "onnx" or both ("onnx,gguf"); with several formats the source is inspected once,
    `output` is a parent directory holding one artifact per format, and a list is returned.
    quant: "fp32", "fp16", "int8" or "int4" for both formats; GGUF also takes "bf16" and any
    llama.cpp type name ("int8" = Q8_0, "int4" = Q4_K_M there).
    exporter (ONNX only): "auto" builds edgekit's own graph where it has one and falls back to
    optimum-onnx otherwise; "edgekit" or "optimum" insists on one path.
    output: default ./NAME-FORMAT-QUANT (./NAME-QUANT/FORMAT for several formats).
    progress: called as progress(stage, done, total), stage "inspect" or "FORMAT/STEP" with STEP one of
    write, quantize, export, hash, verify.
    verify: measure each artifact against its source before it appears (edgekit.verify: transformers
    when installed, else edgekit's own fp32 build) and grade it; one that fails its gate raises
    FidelityGateFailed and leaves nothing, unless keep_failed (then it is kept, marked failed, and
    load() warns). reference_kind, eval_file, max_kl, min_top1, min_cosine: as edgekit.verify.
    Each artifact directory holds the model, tokenizer side files and edgekit.json; it appears only
    when complete. Raises an EdgekitError subclass for every problem with the inputs.
    """
    stage = _Stage(progress)
    checking = None
    if verify:
        from edgekit.quality.fidelity import REFERENCE_KINDS, _evaluation, thresholds_for

        if reference_kind not in REFERENCE_KINDS:
            raise ConversionError(f"unknown reference kind '{reference_kind}'; "
                                  f"use {', '.join(REFERENCE_KINDS)}")
        thresholds_for("int4", max_kl, min_top1, min_cosine)  # bad values fail before any work
        if eval_file is not None:
            _evaluation(eval_file)
        checking = _Checking(keep_failed, reference_kind, eval_file, max_kl, min_top1, min_cosine)
    try:
        with signals_as_interrupt():  # SIGTERM unwinds like Ctrl-C, from the first step to the last
            return _convert(source, to, quant, output, overwrite, revision, allow_remote_code, allow_pickle,
                            exporter, stage, checking)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        raise Interrupted(signum, stage.words, stage.output) from None


@dataclass
class _Checking:
    """convert()'s verification settings."""

    keep_failed: bool
    reference_kind: str
    eval_file: Any
    max_kl: float | None
    min_top1: float | None
    min_cosine: float | None


class _Stage:
    """The progress callback, remembering the stage and output in progress for an interruption's message.

    Stages reach the caller's callback as "inspect" (before any format) or "FORMAT/STEP" ("gguf/write",
    "onnx/hash"), so that bars of a multi-format conversion say which format they belong to.
    """

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.words, self.output, self.format = progress, "reading the checkpoint", "", ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.words = _STAGE_WORDS.get(stage, stage) + (f" ({self.format})" if self.format else "")
        if self.progress:
            self.progress(f"{self.format}/{stage}" if self.format else stage, done, total)


def _convert(source, to, quant, output, overwrite, revision, allow_remote_code, allow_pickle, exporter,
             stage: _Stage, checking: _Checking | None) -> ConversionResult | list[ConversionResult]:
    from edgekit.converters.source import inspect

    start = time.perf_counter()
    formats = _parse_formats(to)
    if exporter not in EXPORTERS:
        raise ConversionError(f"unknown exporter '{exporter}'; use one of {', '.join(EXPORTERS)}")
    if exporter != "auto" and "onnx" not in formats:
        raise ConversionError(f"exporter='{exporter}' chooses how the ONNX graph is made; "
                              f"it has no meaning for to='{','.join(formats)}'")
    schemes = {fmt: _scheme(fmt, quant) for fmt in formats}  # bad names fail before any work
    stage("inspect", 0, 1)
    ckpt = inspect(_resolve_bundled(source), revision=revision, allow_remote_code=allow_remote_code,
                   allow_pickle=allow_pickle)
    route = _onnx_route(ckpt, exporter) if "onnx" in formats else None  # fails before anything is created
    if "gguf" in formats:
        from edgekit.converters.gguf_convert import spec_for

        spec_for(ckpt)
    stage("inspect", 1, 1)
    base = _basename(source, ckpt.path)
    # default names, one shape for every format: NAME-FORMAT-QUANT, or NAME-QUANT/FORMAT for several
    tag = re.sub(r"[^a-z0-9._-]+", "-", quant.lower())
    if len(formats) == 1:
        default = Path.cwd() / f"{base}-{formats[0]}-{tag}"
        finals = {formats[0]: Path(output) if output is not None else default}
    else:
        parent = Path(output) if output is not None else Path.cwd() / f"{base}-{tag}"
        finals = {fmt: parent / fmt for fmt in formats}
    for final in finals.values():  # refuse before writing the first of several artifacts
        check_output(final, overwrite, ckpt.path)
    template = _chat_template(ckpt)
    if template is not None:  # a template that cannot render would fail every chat later
        stage.words = "checking the chat template"
        check_chat_template(template, ckpt)

    results: list[ConversionResult] = []
    final = next(iter(finals.values()))
    try:
        with contextlib.ExitStack() as held:
            for final in finals.values():
                held.enter_context(output_lock(final))
                remove_stale_staging(final)
            # Hash the source on the other core while converting (hashlib releases the GIL); an
            # interruption or error stops the hashing too, instead of waiting for it.
            hasher = held.enter_context(ThreadPoolExecutor(max_workers=1))
            stop_hashing = threading.Event()
            held.callback(stop_hashing.set)
            source_hashes = hasher.submit(ckpt.file_hashes, stop_hashing)
            for fmt in formats:
                t0 = time.perf_counter()
                final = finals[fmt]
                stage.words, stage.format, stage.output = f"converting ({fmt})", fmt, str(final)
                manifest, files = _convert_one(ckpt, fmt, final, schemes[fmt], route, base, source,
                                               source_hashes, template, overwrite, stage, checking)
                stage.output = ""  # finished: an interruption from here on leaves it in place
                q = manifest["quantization"]
                results.append(ConversionResult(
                    path=final.absolute(), format=fmt, quant=q["scheme"], label=q["label"],
                    architecture=ckpt.architecture, files=files, size_bytes=sum(f["size"] for f in files),
                    bits_per_weight=q["bits_per_weight"], tensor_types=q["tensor_types"],
                    seconds=round(time.perf_counter() - (start if len(results) == 0 else t0), 3),
                    exporter=manifest["exporter"], manifest=manifest, note=q.get("note"),
                    fidelity=_report(manifest.get("fidelity"), final),
                ))
    except OSError as exc:
        raise _io_error(exc, final, ckpt.path) from exc
    return results[0] if len(results) == 1 else results


_STAGE_WORDS = {"inspect": "reading the checkpoint", "write": "writing tensors",
                "quantize": "quantizing (llama.cpp)", "export": "exporting (optimum-onnx)",
                "hash": "hashing files", "verify": "verifying fidelity"}


def _report(data: dict[str, Any] | None, path: Path):
    if data is None:
        return None
    from edgekit.quality.fidelity import FidelityReport

    return FidelityReport.from_dict({**data, "artifact": str(path.absolute())})


def _convert_one(ckpt, fmt: str, final: Path, scheme, route, base: str, source, source_hashes,
                 template: str | None, overwrite: bool, progress: Progress,
                 checking: _Checking | None = None) -> tuple[dict[str, Any], list]:
    """Write one artifact through a staging directory; returns its manifest and file list."""
    # once the rename is done, an interruption no longer means "nothing was written"
    done = (lambda: setattr(progress, "output", "")) if isinstance(progress, _Stage) else None
    with staged_output(final, overwrite=overwrite, source=ckpt.path, on_commit=done) as stage:
        if fmt == "gguf":  # an unquantized file llama.cpp quantizes from is kept to verify against
            model_file, fmt_info = _write_gguf(ckpt, stage, scheme, base, progress, keep=checking is not None)
        else:
            model_file, fmt_info = _write_onnx(ckpt, stage, scheme, route, progress)
        unquantized = fmt_info.pop("unquantized", None)
        side = [n for n in _SIDE_FILES if ckpt.has(n)]
        for name in side:
            shutil.copyfile(ckpt.path / name, stage / name)
        progress("hash", 0, 1)
        files = [file_entry(stage, n) for n in [model_file, *fmt_info.pop("extra_files", []), *side]]
        manifest = {
            "edgekit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "format": fmt,
            "architecture": ckpt.architecture,
            "source": {"id": _source_id(source), "revision": ckpt.revision, "files": source_hashes.result()},
            "model_file": model_file,
            "exporter": route[1] if fmt == "onnx" else "edgekit",
            "files": files,
            "chat_template": template,
            "context_length": ckpt.config.get("max_position_embeddings"),
            "tool_versions": _tool_versions(),
            **fmt_info,
        }
        manifest["tokenizer"] = {**manifest.get("tokenizer", {}), **_special_texts(ckpt)}
        write_manifest(stage, manifest)
        if manifest["source"]["id"] == ckpt.path.name:  # a local folder: where it is, for verify later
            from edgekit.cache import remember_source

            remember_source(manifest["source"]["files"], ckpt.path)
        progress("hash", 1, 1)
        if checking is not None:  # graded in the staging folder: a failed artifact never appears
            manifest["fidelity"] = _verify_staged(stage, manifest, ckpt, checking, progress, unquantized)
            write_manifest(stage, manifest)
        if unquantized:
            (stage / unquantized).unlink()
    return manifest, files


def _verify_staged(stage: Path, manifest: dict[str, Any], ckpt, checking: _Checking, progress: Progress,
                   unquantized: str | None) -> dict[str, Any]:
    from edgekit.errors import FidelityGateFailed
    from edgekit.quality.fidelity import EdgekitReference, check, thresholds_for

    label = str(manifest["quantization"]["label"])
    limits = thresholds_for(label, checking.max_kl, checking.min_top1, checking.min_cosine)
    at_hand = None
    if unquantized:  # edgekit's own reference without building another: the file llama.cpp quantized
        kind = unquantized.split(".")[-2]
        at_hand = lambda: EdgekitReference.from_file(  # noqa: E731
            stage, manifest, unquantized,
            f"edgekit's own {kind} gguf build of {ckpt.path.name} (the file llama.cpp's quantizer read)")
    report = check(stage, manifest, ckpt, reference_kind=checking.reference_kind,
                   eval_file=checking.eval_file, thresholds=limits, progress=progress,
                   build_reference=edgekit_reference, at_hand=at_hand)
    data = report.to_dict()
    data.pop("artifact")
    if not report.passed and not checking.keep_failed:
        raise FidelityGateFailed(f"{ckpt.path}: the {manifest['format']} {label} conversion failed its "
                                 f"fidelity gate ({'; '.join(report.failures)}); nothing was written. "
                                 "keep_failed=True (--keep-failed) keeps it, marked failed", report)
    return data


def edgekit_reference(checkpoint: Path, manifest: dict[str, Any], workdir: Path, why: str):
    """edgekit's own fp32 build of `checkpoint` in the artifact's format, in `workdir` and without a
    verification of its own, opened on the CPU: the reference when torch is not at hand."""
    from edgekit.engine import load
    from edgekit.quality.fidelity import EdgekitReference

    fmt = str(manifest.get("format"))
    exporter = "optimum" if manifest.get("exporter") == "optimum-onnx" else "edgekit"
    built = convert(str(checkpoint), to=fmt, quant="fp32", output=workdir / "reference",
                    exporter=exporter if fmt == "onnx" else "auto", verify=False)
    what = f"edgekit's own fp32 {fmt} build of {checkpoint.name}{why}"
    return EdgekitReference(load(built.path, device="cpu"), what)


def _source_id(source: str | os.PathLike[str]) -> str:
    """How the manifest names the source: a hub id or bundled:NAME as given, a local checkpoint by its
    directory name only (artifacts get shared: no path of the converting machine goes in them)."""
    text = str(source)
    if text.startswith(BUNDLED_PREFIX) or not Path(text).expanduser().exists():
        return text
    return Path(text).expanduser().resolve().name


def _io_error(exc: OSError, final: Path, source: Path) -> ConversionError:
    """A file-system failure (disk full, permissions, a source file gone) as one line naming the place."""
    import errno

    where = Path(exc.filename) if isinstance(exc.filename, str) else final.parent
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(final.parent).free if final.parent.is_dir() else 0
        return ConversionError(f"{final}: no space left on the device while writing "
                               f"({free / 1e6:.0f} MB free at {final.parent}); "
                               "free some space or choose another output. Nothing was written")
    verb = "read" if where.absolute().is_relative_to(source) else "write"
    return ConversionError(f"{final}: could not {verb} {where} ({exc.strerror or exc}); nothing was written")


def check_chat_template(template: str, ckpt) -> None:
    """Render the checkpoint's chat template once, within limits, before converting anything."""
    from edgekit.runtimes.chat_template import check_template

    texts = _special_texts(ckpt)
    try:
        check_template(template, texts.get("bos_text", ""), texts.get("eos_text", ""))
    except EdgekitError as exc:
        where = ckpt.path / ("chat_template.jinja" if ckpt.has("chat_template.jinja")
                             else "tokenizer_config.json")
        raise ConversionError(f"{where}: the chat template cannot render a simple conversation ({exc}); "
                              "fix or remove it") from exc


def _scheme(fmt: str, quant: str):
    if fmt == "gguf":
        from edgekit.converters.quant import gguf_quant

        return gguf_quant(quant)
    from edgekit.converters.onnx_recipe import onnx_precision

    return onnx_precision(quant)


def _onnx_route(ckpt, exporter: str) -> tuple[str, str]:
    """(graph kind, exporter) for the ONNX path: our own graphs for the native families, optimum-onnx's
    exporter for anything else it knows (the fallback). Raises when neither applies, or when the
    packages that write and check ONNX are not installed (the hint names the extra)."""
    for module, package in (("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
        require(module, package, "onnx", "Converting to ONNX")
    from edgekit.converters.onnx_decoder import DECODERS
    from edgekit.converters.onnx_encoder import ENCODERS

    native = exporter != "optimum" and (ckpt.architecture in DECODERS or ckpt.architecture in ENCODERS)
    if native and not ckpt.has("tokenizer.json") and importlib.util.find_spec("transformers") is None:
        raise TokenizerError(f"{ckpt.path}: no tokenizer.json, which ONNX runtimes tokenize with. Install "
                             "transformers (edgekit then converts tokenizer.model or vocab.txt), or save "
                             "one: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)")
    if exporter != "optimum" and ckpt.architecture in DECODERS:
        return "decoder", "edgekit"
    if exporter != "optimum" and ckpt.architecture in ENCODERS:
        return "encoder", "edgekit"
    if exporter == "edgekit":
        raise UnsupportedArchitectureError(str(ckpt.path / "config.json"), ckpt.architecture,
                                           [*DECODERS, *ENCODERS], " natively (exporter='edgekit'); "
                                           "exporter='auto' tries optimum-onnx")
    from edgekit.converters import onnx_optimum

    if not onnx_optimum.supports(ckpt):  # raises MissingDependencyError without the optimum extra
        raise UnsupportedArchitectureError(
            str(ckpt.path / "config.json"), ckpt.architecture, [*DECODERS, *ENCODERS],
            f"; nor does the optimum-onnx fallback serve it (model_type '{ckpt.config.get('model_type')}', "
            f"task {onnx_optimum.task_for(ckpt) or 'none edgekit runs'})")
    return ("decoder" if onnx_optimum.task_for(ckpt) != "feature-extraction" else "encoder"), "optimum-onnx"


def _write_gguf(ckpt, stage: Path, scheme, base: str, progress: Progress | None,
                keep: bool = False) -> tuple[str, dict[str, Any]]:
    """keep: leave the unquantized file llama.cpp's quantizer read in the staging folder (named in the
    result's "unquantized"), to verify against; the caller removes it."""
    from edgekit.converters.gguf_convert import source_precision, write_gguf
    from edgekit.converters.gguf_info import gguf_stats, precision_note
    from edgekit.runtimes.gguf_preflight import preflight

    model_file = f"{base}.{scheme.name}.gguf"
    if scheme.direct is not None:
        info = write_gguf(ckpt, stage / model_file, scheme.direct, scheme.file_type, base, progress)
    else:
        import gguf

        from edgekit.converters.llama_quantize import quantize

        inter_type = source_precision(ckpt)
        inter_ft = {gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
                    gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
                    gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16}[inter_type]
        intermediate = stage / f".intermediate.{inter_type.name}.gguf"
        try:
            info = write_gguf(ckpt, intermediate, inter_type, inter_ft, base, progress)
            if progress:
                progress("quantize", 0, 1)
            quantize(intermediate, stage / model_file, scheme.file_type)
            if progress:
                progress("quantize", 1, 1)
        finally:
            if not keep:
                intermediate.unlink(missing_ok=True)
        if keep:
            info["unquantized"] = intermediate.name
    try:  # the checks edgekit.load runs before llama.cpp sees a file: fail now, not at the user's first load
        header = preflight(stage / model_file)
    except ArtifactError as exc:
        raise ConversionError(f"{ckpt.path}: the GGUF it converts to would not load in llama.cpp: "
                              f"{str(exc).split(': ', 1)[-1]}") from exc
    # from the file's tensor table: llama.cpp's quantizer chose the real types
    stats = gguf_stats((ne, kind) for ne, kind, _ in header.tensors.values())
    note = precision_note(((ne, kind) for ne, kind, _ in header.tensors.values()), scheme.name, scheme.label)
    extra = {}
    if info["task"] == "feature-extraction":
        from edgekit.converters.source import sentence_pooling

        extra["pooling"] = sentence_pooling(ckpt)
    if "unquantized" in info:
        extra["unquantized"] = info["unquantized"]
    return model_file, {
        **extra,
        "task": info["task"],
        "gguf_architecture": info["arch"],
        "quantization": {"scheme": scheme.name, "label": scheme.label,
                         "bits_per_weight": stats["bits_per_weight"], "tensor_types": stats["tensor_types"],
                         **({"note": note} if note else {})},
        "tokenizer": {k: info[k]
                      for k in ("model", "pre", "vocab_size", "special_ids", "add_bos", "add_eos")},
    }


def _write_onnx(ckpt, stage: Path, precision, route: tuple[str, str],
                progress: Progress | None) -> tuple[str, dict[str, Any]]:
    from edgekit.converters.onnx_decoder import build_decoder
    from edgekit.converters.onnx_encoder import build_encoder

    model_file = "model.onnx"
    kind, exporter = route
    encoder = kind == "encoder"
    if exporter == "optimum-onnx":
        from edgekit.converters.onnx_optimum import export, scheme

        info = export(ckpt, stage / model_file, precision, progress)
        words = scheme(precision)
    else:
        info = (build_encoder if encoder else build_decoder)(ckpt, stage / model_file, precision, progress)
        words = info.pop("scheme")
        info["external_data"] += _tokenizer_json(ckpt, stage)
    extra = {} if encoder else {"context_length": info["context_length"]}  # the graph's, which may be capped
    bits = info.pop("bits_per_weight")
    note = None
    if precision.name == "int4" and bits > 5:  # the recipe's 8-bit tensors, visible in small models
        note = (f"int4 is {bits:.1f} bits per weight here: the recipe keeps the embedding and the tensors "
                "whose error matters most at 8 bits, and every block of 32 weights carries its own scale "
                "and zero point")
    return model_file, {
        **extra,
        "task": "feature-extraction" if encoder else "text-generation",
        "extra_files": info.pop("external_data"),
        "quantization": {"scheme": words, "label": precision.name, "bits_per_weight": bits,
                         "tensor_types": info.pop("tensor_types"), **({"note": note} if note else {})},
        "onnx": info,
        "tokenizer": _tokenizer_ids(ckpt),
    }


def _tokenizer_json(ckpt, stage: Path) -> list[str]:
    """ONNX runtimes tokenize with tokenizer.json. A SentencePiece-only checkpoint gets one, converted
    by transformers' tokenizer (as the optimum fallback does); without transformers it is refused
    before any work (_onnx_route)."""
    if ckpt.has("tokenizer.json"):
        return []
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(ckpt.path), use_fast=True)
        tok.backend_tokenizer.save(str(stage / "tokenizer.json"))
    except Exception as exc:  # transformers raises many kinds for a tokenizer it cannot convert
        raise TokenizerError(f"{ckpt.path}: no tokenizer.json, and transformers could not make one from "
                             f"tokenizer.model ({type(exc).__name__}: {exc})") from exc
    return ["tokenizer.json"]


def _tokenizer_ids(ckpt) -> dict[str, Any]:
    """Special ids for runtimes that read tokenizer.json (the GGUF path gets them from gguf's reader)."""
    config = ckpt.json_file("generation_config.json") or {}
    ids = {k: config.get(f"{k}_token_id", ckpt.config.get(f"{k}_token_id")) for k in ("bos", "eos", "pad")}
    return {"special_ids": {k: v for k, v in ids.items() if v is not None}}


def _chat_template(ckpt) -> str | None:
    if ckpt.has("chat_template.jinja"):
        return (ckpt.path / "chat_template.jinja").read_text(encoding="utf-8")
    config = ckpt.json_file("tokenizer_config.json") or {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _special_texts(ckpt) -> dict[str, str]:
    """BOS/EOS as text, for chat templates that write them (Llama-3's does)."""
    config = ckpt.json_file("tokenizer_config.json") or {}
    out = {}
    for typ in ("bos", "eos"):
        value = config.get(f"{typ}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[f"{typ}_text"] = value
    return out


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("gguf", "numpy", "tokenizers", "llama-cpp-python"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out

"""The `edgekit` command: the Python API, one command per function, `--json` on every report.

User errors (EdgekitError) print one line and exit 1; only bugs produce a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .bundled import DEFAULT as BUNDLED_DEFAULT
from .bundled import NAMES as BUNDLED_NAMES
from .errors import EdgekitError, Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Convert distilled Hugging Face models to GGUF and ONNX (int8/int4) and run them "
                       "locally: generation, chat and embeddings on CPU, CUDA or Apple.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Convert distilled Hugging Face models to GGUF and ONNX and run them locally."""


def _fail(exc: BaseException, as_json: bool) -> None:
    """One line (or one JSON error object) and a non-zero exit: 1 for a user error, 128 + the
    signal for an interruption (130 Ctrl-C, 143 SIGTERM)."""
    message = str(exc) or ("interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt)
                           else type(exc).__name__)
    code = exc.exit_code if isinstance(exc, Interrupted) else 130 if isinstance(exc, KeyboardInterrupt) else 1
    if as_json:
        typer.echo(json.dumps({"ok": False, "error": type(exc).__name__, "message": message,
                               "exit_code": code}))
    else:
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps({"ok": True, **data}, default=str))
    else:
        typer.echo(human)


class _StageProgress:
    """rich progress bars, one per conversion stage (inspect, write, quantize, hash)."""

    _LABELS = {"inspect": "Reading checkpoint", "write": "Writing tensors",
               "quantize": "Quantizing (llama.cpp)", "export": "Exporting (optimum-onnx)",
               "hash": "Hashing files"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tasks: dict[str, int] = {}
        self.progress = None

    def __enter__(self) -> _StageProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self.progress.start()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        key = stage
        if key in self.tasks and done == 0 and self.progress.tasks[self.tasks[key]].finished:
            key = f"{stage}#{len(self.tasks)}"  # a second pass of the same stage (intermediate file)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(self._LABELS.get(stage, stage), total=total)
        self.progress.update(self.tasks[key], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


@app.command()
def convert(
    source: Annotated[str, typer.Argument(
        help="HF checkpoint directory, hub id (owner/name) or bundled:NAME")],
    to: Annotated[str, typer.Option("--to", help="output format(s), comma-separated")] = "gguf",
    quant: Annotated[str, typer.Option(
        "--quant", "-q", help="fp32, fp16, int8, int4 (GGUF also: bf16, llama.cpp types)")] = "int4",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="artifact directory to create")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output")] = False,
    revision: Annotated[str | None, typer.Option(
        "--revision", help="hub revision (branch, tag or commit)")] = None,
    allow_remote_code: Annotated[bool, typer.Option(
        "--allow-remote-code", help="convert configs with auto_map")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="read pickle (.bin) weights")] = False,
    exporter: Annotated[str, typer.Option(
        "--exporter", help="ONNX: auto (native, else optimum), edgekit or optimum")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Convert a Hugging Face checkpoint into GGUF and/or ONNX artifacts (edgekit.convert)."""
    from .conversion import convert as run_convert

    _quiet_gguf_logs()
    try:
        with _StageProgress(enabled=not as_json and sys.stderr.isatty()) as progress:
            result = run_convert(source, to=to, quant=quant, output=output, overwrite=overwrite,
                                 revision=revision, allow_remote_code=allow_remote_code,
                                 allow_pickle=allow_pickle, exporter=exporter, progress=progress)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    results = result if isinstance(result, list) else [result]
    data = results[0].to_dict() if len(results) == 1 else {"artifacts": [r.to_dict() for r in results]}
    _emit(data, as_json, "\n".join(f"wrote {r.path} ({r.format}, {r.quant}, {r.size_bytes / 1e6:.1f} MB, "
                                   f"{r.bits_per_weight:.2f} bits/weight) in {r.seconds:.1f} s"
                                   f"{_path_taken(r)}"
                                   for r in results))


def _path_taken(result) -> str:
    if result.exporter == "edgekit":
        return ""
    return (f"\n  exported through {result.exporter} for {result.architecture} "
            "(the fallback path, not edgekit's own graph)")


@app.command()
def bundled(
    name: Annotated[str, typer.Argument(help=f"bundled model: {', '.join(BUNDLED_NAMES)}")] = BUNDLED_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Materialize a bundled real model as an HF checkpoint and print its path (edgekit.bundled.path)."""
    from . import bundled as bundled_models

    try:
        path = bundled_models.path(name)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    _emit({"name": name, "path": str(path)}, as_json, str(path))


@app.command()
def info(
    artifact: Annotated[Path, typer.Argument(help="artifact directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Verify an artifact's files against edgekit.json and show its manifest (edgekit.read_manifest)."""
    from .artifact import read_manifest

    try:
        manifest = read_manifest(artifact)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    q = manifest.get("quantization", {})
    _emit({"manifest": manifest}, as_json,
          f"{artifact}: {manifest.get('format')} {manifest.get('architecture')} {q.get('scheme')} "
          f"({q.get('bits_per_weight')} bits/weight), files verified")


@app.command()
def run(
    artifact: Annotated[Path, typer.Argument(help="artifact directory")],
    prompt: Annotated[str, typer.Argument(help="text to complete")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.0,
    top_k: Annotated[int | None, typer.Option("--top-k", help="default 40 (0: off)")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="default 1.0 (off)")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", help="default 0 (off)")] = None,
    repeat_penalty: Annotated[float | None, typer.Option("--repeat-penalty", help="default 1 (off)")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="stop string (repeatable)")] = None,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos", help="generate max_tokens even past EOS")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or apple")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores)")] = None,
    ctx_size: Annotated[int | None, typer.Option("--ctx-size", "-c", help="context window in tokens")] = None,
    chat: Annotated[bool, typer.Option(
        "--chat", help="wrap the prompt in the artifact's chat template")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print text and metrics as JSON")] = False,
) -> None:
    """Generate from a prompt, streaming the text (edgekit.load(...).generate / .chat)."""
    from .engine import load

    try:
        with load(artifact, device=device, n_ctx=ctx_size, threads=threads) as engine:
            sampling = {"top_k": top_k, "top_p": top_p, "min_p": min_p, "repeat_penalty": repeat_penalty}
            kwargs = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, "stop": stop or (),
                      "ignore_eos": ignore_eos, **{k: v for k, v in sampling.items() if v is not None}}
            messages = [{"role": "user", "content": prompt}]
            if as_json:
                result = engine.chat(messages, **kwargs) if chat else engine.generate(prompt, **kwargs)
                _emit({**_where(engine), **result.to_dict()}, True, "")
                return
            pieces = (engine.chat(messages, stream=True, **kwargs) if chat
                      else engine.generate(prompt, stream=True, **kwargs))
            for piece in pieces:
                typer.echo(piece, nl=False)
            typer.echo("")
            _report(engine, pieces.result)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)


def _where(engine) -> dict[str, Any]:
    """Which backend, device, format and quantization a run used (for --json and the stderr line)."""
    quant = engine.manifest.get("quantization") or {}
    return {"backend": engine.backend.name, "device": engine.device, "format": engine.manifest.get("format"),
            "quant": quant.get("label") or quant.get("scheme")}


def _report(engine, result) -> None:
    """The numbers a person wants after a reply, on stderr so that stdout stays the text alone."""
    if result is None:
        return
    where = _where(engine)
    typer.secho(f"[{result.tokens_out} tokens, TTFT {1000 * result.ttft_s:.0f} ms, "
                f"{result.decode_tok_s:.1f} tok/s, {result.finish_reason}; {where['backend']} on "
                f"{where['device']}, {where['format']} {where['quant']}]", err=True, dim=True)


# chat's sampling when neither the command line nor the artifact's generation_config sets one:
# llama.cpp's interactive defaults, which keep small instruct models from rambling
CHAT_SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}


@app.command()
def chat(
    artifact: Annotated[Path, typer.Argument(help="artifact directory")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 256,
    temperature: Annotated[float | None, typer.Option(
        "--temperature", "-t", help="default: the model's generation_config, else 0.8")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="default: model, else 40")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="default: model, else 0.95")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", help="default: model, else 0.05")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    system: Annotated[str | None, typer.Option("--system", help="a system message to start with")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or apple")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores)")] = None,
    ctx_size: Annotated[int | None, typer.Option("--ctx-size", "-c", help="context window in tokens")] = None,
) -> None:
    """Interactive chat in the terminal (Ctrl-C stops a reply; an empty line or Ctrl-D ends it)."""
    from .engine import load

    try:
        with load(artifact, device=device, n_ctx=ctx_size, threads=threads) as engine:
            given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
            sampling = {**CHAT_SAMPLING, **engine.generation_defaults(),
                        **{k: v for k, v in given.items() if v is not None}}
            messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
            while True:
                try:
                    line = input("> ").strip()
                except EOFError:
                    break
                if not line:
                    break
                messages.append({"role": "user", "content": line})
                reply = ""
                stream = engine.chat(messages, max_tokens=max_tokens, seed=seed, stream=True, **sampling)
                try:
                    for piece in stream:
                        reply += piece
                        typer.echo(piece, nl=False)
                except KeyboardInterrupt:  # Ctrl-C stops this reply; Ctrl-C at the prompt ends the chat
                    stream.close()
                    typer.echo(" [stopped]", err=True)
                typer.echo("")
                _report(engine, stream.result)
                messages.append({"role": "assistant", "content": reply})
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, False)


@app.command("list")
def list_artifacts(
    root: Annotated[Path, typer.Argument(help="folder to look in (three levels deep)")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="print the artifacts as JSON")] = False,
) -> None:
    """The edgekit artifacts under a folder: format, architecture, quantization, size
    (edgekit.find_artifacts)."""
    from .artifact import find_artifacts

    try:
        found = find_artifacts(root)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    lines = [f"{a['path']}  {a['format']}  {a['architecture']}  {a['quant']}  {a['size_mb']} MB"
             + (f"  ({a['error']})" if a.get("error") else "") for a in found]
    _emit({"artifacts": found}, as_json, "\n".join(lines) or f"no edgekit artifacts under {root}")


@app.command()
def embed(
    artifact: Annotated[Path, typer.Argument(help="artifact directory of an embedding model")],
    texts: Annotated[list[str], typer.Argument(help="texts to embed")],
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or apple")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the vectors as JSON")] = False,
) -> None:
    """One vector per text, one line each (edgekit.load(...).embed)."""
    from .engine import load

    try:
        with load(artifact, device=device, threads=threads) as engine:
            vectors = engine.embed(list(texts))
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    rows = [[round(float(v), 6) for v in row] for row in vectors]
    _emit({"dim": len(rows[0]), "vectors": rows}, as_json, "\n".join(" ".join(map(str, row)) for row in rows))


@app.command()
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """What each backend can run on here, and what device='auto' would pick (edgekit.devices)."""
    from .hardware import devices as detect

    report = detect()
    lines = [f"{name}: {', '.join(info.get('devices', [])) or 'unavailable'} (auto: {info.get('auto', '-')}; "
             f"{info.get('why', '')})" for name, info in report.items() if isinstance(info, dict)]
    _emit(report, as_json, "\n".join(lines))


def _quiet_gguf_logs() -> None:
    import logging

    logging.getLogger("gguf").setLevel(logging.ERROR)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

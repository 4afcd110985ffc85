"""The `edgekit` command: the Python API, one command per function, `--json` on every report.

User errors (EdgekitError) print one line and exit 1; only bugs produce a traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.bundled import DEFAULT as BUNDLED_DEFAULT
from edgekit.bundled import NAMES as BUNDLED_NAMES
from edgekit.errors import ContextOverflowError, EdgekitError, Interrupted, InvalidOptionError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Convert distilled Hugging Face models to GGUF and ONNX (int8/int4) and run them "
                       "locally: generation, chat and embeddings on CPU, CUDA or Apple.")


def _version(value: bool) -> None:
    if value:
        from edgekit.version import __version__

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


# The fidelity check's options, shared by convert and verify.
RefKindOpt = Annotated[str, typer.Option(
    "--reference-kind", help="auto (transformers when installed, else edgekit's own fp32 build), "
                             "transformers or edgekit")]
EvalFileOpt = Annotated[Path | None, typer.Option(
    "--eval-file", help="grade on this UTF-8 text instead of edgekit's evaluation text")]
MaxKlOpt = Annotated[float | None, typer.Option(
    "--max-kl", help="gate: highest mean KL allowed (default: per quantization level)")]
MinTop1Opt = Annotated[float | None, typer.Option(
    "--min-top1", help="gate: lowest top-1 agreement allowed (default: per level)")]
MinCosOpt = Annotated[float | None, typer.Option(
    "--min-cosine", help="gate, embedders: lowest mean cosine allowed (default: per level)")]

# Options shared by every command that loads a model; names follow llama.cpp's tools where they have one.
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or apple")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: every core)")]
CtxOpt = Annotated[int | None, typer.Option(
    "--ctx-size", "-c", help="context window in tokens (default: the model's, at most 4096)")]
SeedOpt = Annotated[int | None, typer.Option("--seed", "-s", help="sampling seed (default: random)")]
TempOpt = Annotated[float | None, typer.Option(
    "--temp", "--temperature", help="0 = greedy (default: the model's generation_config, else 0.8)")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="0 = off (default: model's, else 40)")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="1 = off (default: model's, else 0.95)")]
MinPOpt = Annotated[float | None, typer.Option("--min-p", help="0 = off (default: model's, else 0.05)")]
RepeatOpt = Annotated[float | None, typer.Option(
    "--repeat-penalty", help="1 = off (default: model's, else 1)")]
FreqOpt = Annotated[float | None, typer.Option(
    "--frequency-penalty", help="-2 to 2, 0 = off: minus count x this from a recent token's logit")]
PresenceOpt = Annotated[float | None, typer.Option(
    "--presence-penalty", help="-2 to 2, 0 = off: minus this from any recent token's logit")]
BudgetOpt = Annotated[str | None, typer.Option(
    "--budget", metavar="LINES",
    help='latency budget, e.g. "ttft=300ms,tpot=25ms,itl_p99=80ms,total=5s,rss=1GB"; a miss exits 1')]


class _StageProgress:
    """rich progress bars on stderr, one per conversion stage, each labelled with its format."""

    _LABELS = {"inspect": "reading checkpoint", "write": "writing tensors",
               "quantize": "quantizing (llama.cpp)", "export": "exporting (optimum-onnx)",
               "hash": "hashing, manifest", "verify": "verifying fidelity"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.current: dict[str, int] = {}  # stage -> its bar (a stage that starts over gets a new one)
        self.progress = None

    def __enter__(self) -> _StageProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self.progress.start()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        task = self.current.get(stage)
        if task is None or (done == 0 and self.progress.tasks[task].finished):
            fmt, _, step = stage.rpartition("/")
            label = self._LABELS.get(step, step)
            task = self.progress.add_task(f"{fmt.upper()} {label}" if fmt else label, total=total)
            self.current[stage] = task
        self.progress.update(task, completed=done, total=total)

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
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="skip the fidelity check against the source (edgekit verify)")] = False,
    keep_failed: Annotated[bool, typer.Option(
        "--keep-failed", help="keep an artifact that fails its fidelity gate, marked failed")] = False,
    reference_kind: RefKindOpt = "auto",
    eval_file: EvalFileOpt = None,
    max_kl: MaxKlOpt = None,
    min_top1: MinTop1Opt = None,
    min_cosine: MinCosOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Convert a Hugging Face checkpoint into GGUF and/or ONNX artifacts, each verified against its
    source before it appears (edgekit.convert)."""
    from edgekit.conversion.pipeline import convert as run_convert

    _quiet_gguf_logs()
    try:
        with _StageProgress(enabled=not as_json and sys.stderr.isatty()) as progress:
            result = run_convert(source, to=to, quant=quant, output=output, overwrite=overwrite,
                                 revision=revision, allow_remote_code=allow_remote_code,
                                 allow_pickle=allow_pickle, exporter=exporter, progress=progress,
                                 verify=not no_verify, keep_failed=keep_failed, reference_kind=reference_kind,
                                 eval_file=eval_file, max_kl=max_kl, min_top1=min_top1, min_cosine=min_cosine)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    results = result if isinstance(result, list) else [result]
    _emit({"artifacts": [r.to_dict() for r in results]}, as_json, "\n".join(_converted(r) for r in results))


def _converted(result) -> str:
    """One artifact per line; then why its size is what it is and which path made it, if needed."""
    kind = f"{result.format} {result.label}" + (f" ({result.quant})" if result.format == "gguf" else "")
    lines = [f"wrote {result.path} ({kind}, {result.size_bytes / 1e6:.1f} MB, "
             f"{result.bits_per_weight:.2f} bits/weight) in {result.seconds:.1f} s"]
    if result.note:
        lines.append(f"  note: {result.note}")
    if result.fidelity is not None:
        lines.append(f"  {result.fidelity.summary()}")
    if result.exporter != "edgekit":
        lines.append(f"  exported through {result.exporter} for {result.architecture} "
                     "(the fallback path, not edgekit's own graph)")
    return "\n".join(lines)


@app.command()
def bundled(
    name: Annotated[str, typer.Argument(help=f"bundled model: {', '.join(BUNDLED_NAMES)}")] = BUNDLED_DEFAULT,
    as_list: Annotated[bool, typer.Option("--list", help="list the bundled models")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Materialize a bundled real model as an HF checkpoint and print its path (edgekit.bundled.path);
    --list names them all (edgekit.bundled.listing)."""
    from edgekit import bundled as bundled_models

    if as_list:
        models = bundled_models.listing()
        _emit({"models": models}, as_json, "\n".join(
            f"{m['name']:<24} {m['task']:<19} {m['description']}" for m in models))
        return
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
    from edgekit.artifact import read_manifest

    try:
        manifest = read_manifest(artifact)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    q = manifest.get("quantization", {})
    _emit({"manifest": manifest}, as_json,
          f"{artifact}: {manifest.get('format')} "
          f"{manifest.get('architecture') or manifest.get('gguf_architecture') or 'model'} {q.get('scheme')} "
          f"({q.get('bits_per_weight')} bits/weight), files verified"
          + (f"\n  imported from {manifest['source']['id']}" if manifest.get("exporter") == "imported GGUF"
             else "")
          + (f"\n  note: {q['note']}" if q.get("note") else "")
          + ("" if manifest.get("fidelity") else "\n  fidelity: not verified (edgekit verify)"))
    if not as_json and manifest.get("fidelity"):
        _print_fidelity(manifest["fidelity"])


def _fidelity_table(data: dict[str, Any]):
    """The fidelity section of `info` and the body of `verify`: a verdict line, then a rich table."""
    from rich.table import Table

    from edgekit.quality.fidelity import FidelityReport

    report = FidelityReport.from_dict({"artifact": "", **data})
    sha = str(report.eval_text.get("sha256"))[:12]
    calibration = ("it holds the calibration text, so these figures flatter the model"
                   if report.eval_text.get("calibrated_on") else "not the calibration text")
    table = Table(title=report.summary(), title_justify="left", show_edge=False,
                  caption=f"graded on {report.eval_text.get('name')} (sha256 {sha}), {calibration}",
                  caption_justify="left")
    for column in ("metric", "value", "gate"):
        table.add_column(column)
    for row in report.rows():
        table.add_row(*row)
    return table


def _print_fidelity(data: dict[str, Any]) -> None:
    from rich.console import Console

    Console(width=max(100, _terminal_width())).print(_fidelity_table(data))


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def _budget(text: str | None):
    """--budget's words as a LatencyBudget (mode record: the CLI reports and sets the exit status).
    A malformed string is a usage error (exit 2) naming the bad part."""
    if text is None:
        return None
    from edgekit.metrics import LatencyBudget

    try:
        return LatencyBudget.parse(text)
    except EdgekitError as exc:
        raise typer.BadParameter(str(exc), param_hint="--budget") from None


def _sampling(engine, **given: Any) -> dict[str, Any]:
    """What the command line sets, over the model's generation_config, over llama.cpp's defaults."""
    return {**engine.generation_defaults(), **{k: v for k, v in given.items() if v is not None}}


@app.command()
def run(
    artifact: Annotated[Path, typer.Argument(
        help="artifact directory or model reference (a bundled name, hub id or checkpoint folder, "
             "converted once); or several, comma-separated, to run the most faithful that meets --budget")],
    prompt: Annotated[str | None, typer.Argument(
        help="the user's message (with --raw: text to complete); - or a pipe: read it from stdin; none on "
             "a terminal: chat", show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", "--n-predict")] = 128,
    temperature: TempOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repeat_penalty: RepeatOpt = None,
    frequency_penalty: FreqOpt = None,
    presence_penalty: PresenceOpt = None,
    seed: SeedOpt = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="stop string (repeatable)")] = None,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos", help="generate max_tokens even past EOS")] = False,
    raw: Annotated[bool, typer.Option(
        "--raw", help="complete the prompt as it is, without the artifact's chat template")] = False,
    budget: BudgetOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    ctx_size: CtxOpt = None,
    logprobs: Annotated[int | None, typer.Option(
        "--logprobs", help="with --json: each token's log-probability and its N likeliest alternatives "
                           "(0 to 20)", show_default=False)] = None,
    json_schema: Annotated[Path | None, typer.Option(
        "--json-schema", help="the reply is JSON matching this JSON Schema file (decoding is held to it)",
        show_default=False)] = None,
    json_object: Annotated[bool, typer.Option(
        "--json-object", help="the reply is one JSON object")] = False,
    regex: Annotated[str | None, typer.Option(
        "--regex", help="the reply matches this regular expression", show_default=False)] = None,
    tools: Annotated[Path | None, typer.Option(
        "--tools", help="a JSON file of OpenAI tool objects the model may call; calls print as JSON lines",
        show_default=False)] = None,
    tool_choice: Annotated[str | None, typer.Option(
        "--tool-choice", help="auto (default), none, required, or a tool's name", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print text and metrics as JSON")] = False,
) -> None:
    """Answer a prompt, streaming the text: through the artifact's chat template when it has one, as
    ollama does (--raw completes the text as it is). Text on stdout; TTFT, tok/s, backend and device
    on stderr (edgekit.load(...).chat / .generate). --json-schema, --json-object and --regex hold the
    reply to a format; --tools lets the model call functions (chat's response_format and tools)."""
    from edgekit.engine import load

    if prompt is None and sys.stdin.isatty():  # nothing to answer yet: talk, as ollama run does
        chat(artifact, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
             min_p=min_p, repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
             presence_penalty=presence_penalty, seed=seed, budget=budget, device=device, threads=threads,
             ctx_size=ctx_size)
        return
    limits = _budget(budget)
    try:
        if logprobs is not None and not as_json:
            raise InvalidOptionError("--logprobs is shown in the JSON output: add --json")
        structure = _structure(json_schema, json_object, regex, tools, tool_choice, raw)
        if prompt is None or prompt == "-":
            prompt = sys.stdin.read()
            if not prompt.strip():
                raise InvalidOptionError("no prompt: stdin was empty (give one, or pipe text in)")
        with load(_variants(artifact), device=device, n_ctx=ctx_size, threads=threads,
                  budget=limits) as engine:
            _say_choice(engine, as_json)
            kwargs = {"max_tokens": max_tokens, "seed": seed, "stop": stop or (), "ignore_eos": ignore_eos,
                      **({"logprobs": logprobs} if logprobs is not None else {}),
                      **_sampling(engine, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                  presence_penalty=presence_penalty)}
            templated = not raw and bool(engine.manifest.get("chat_template"))
            if structure.get("tools") and not templated:
                raise InvalidOptionError(f"--tools needs a chat template, and {engine.path} has none")
            kwargs.update(structure)
            call = (lambda **kw: engine.chat(prompt, **kw)) if templated else (
                lambda **kw: engine.generate(prompt, **kw))
            where = {**_where(engine), "prompt_mode": "chat" if templated else "raw",
                     "artifact": str(engine.path)}
            if as_json:
                result = call(**kwargs)
                _emit({**where, **result.to_dict()}, True, "")
            else:
                pieces, shown = call(stream=True, **kwargs), False
                for piece in pieces:
                    typer.echo(piece, nl=False)
                    shown = True
                result = pieces.result
                if shown or result is None or not result.tool_calls:
                    typer.echo("")
                for made in result.tool_calls if result is not None else ():  # one JSON line per call
                    typer.echo(json.dumps(made.to_dict(), ensure_ascii=False))
                _report(engine, result, where["prompt_mode"])
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    if result is not None and result.budget is not None and not result.budget.met:
        raise typer.Exit(1)


def _structure(json_schema: Path | None, json_object: bool, regex: str | None, tools: Path | None,
               tool_choice: str | None, raw: bool) -> dict[str, Any]:
    """run's --json-schema, --json-object, --regex, --tools and --tool-choice as chat()'s keywords."""
    given = (("--json-schema", json_schema is not None), ("--json-object", json_object),
             ("--regex", regex is not None))
    formats = [name for name, on in given if on]
    if len(formats) > 1:
        raise InvalidOptionError(f"{' and '.join(formats)} each set the reply's format: give one")
    out: dict[str, Any] = {}
    if json_schema is not None:
        schema = _json_file(json_schema, "--json-schema")
        if isinstance(schema, dict) and "schema" in schema and set(schema) <= {"name", "schema", "strict",
                                                                              "description"}:
            spec = schema  # OpenAI's {"name", "schema"} wrapper, as an API request carries it
        else:
            spec = {"name": json_schema.stem, "schema": schema}
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif json_object:
        out["response_format"] = {"type": "json_object"}
    elif regex is not None:
        out["response_format"] = {"type": "regex", "regex": regex}
    if tools is not None:
        if raw:
            raise InvalidOptionError("--tools needs the chat template; leave out --raw")
        out["tools"] = _json_file(tools, "--tools")
    if tool_choice is not None:
        if tools is None:
            raise InvalidOptionError("--tool-choice needs --tools")
        named = tool_choice not in ("auto", "none", "required")
        out["tool_choice"] = {"type": "function", "function": {"name": tool_choice}} if named else tool_choice
    from edgekit.errors import SchemaError
    from edgekit.structured import plan

    try:  # checked now, so that the error names the option and file it came from
        plan(**out)
    except SchemaError as exc:
        where = {"response_format": next((f"{name} {value}" for name, value in (
            ("--json-schema", json_schema), ("--regex", regex)) if value is not None), "--json-object"),
                 "tools": f"--tools {tools}", "tool_choice": "--tool-choice"}.get(exc.field)
        raise SchemaError(f"{where}: {exc}" if where else str(exc), exc.field) from None
    return out


def _json_file(path: Path, option: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidOptionError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InvalidOptionError(f"{option} {path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidOptionError(f"{option} {path}: not JSON ({exc.msg} at line {exc.lineno}, "
                                 f"column {exc.colno})") from None


def _variants(artifact: Path) -> Path | list[Path]:
    """ARTIFACT, or several comma-separated: the variants load() chooses among (with --budget). Each
    may be any model reference (conversion.references): a bundled name, a hub id or a checkpoint
    folder is converted once into the cache first, with a line saying so."""
    from edgekit.conversion.references import artifact_for

    text = str(artifact)
    refs = [p.strip() for p in text.split(",") if p.strip()] if "," in text else [text]
    with _StageProgress(enabled=sys.stderr.isatty()) as progress:
        found = [artifact_for(r, progress, _say_line) for r in refs]
    return found if "," in text else found[0]


def _served(item: str) -> str:
    """NAME=REF or REF for serve, with REF made an artifact (converted once when it is not one); a
    reference that is not a folder of its own is served under the name it was given by."""
    from edgekit.artifact import MANIFEST
    from edgekit.conversion.references import artifact_for

    name, _, ref = item.rpartition("=") if "=" in item else ("", "", item)
    if (Path(ref).expanduser() / MANIFEST).is_file():
        return item
    return f"{name or ref.removeprefix('bundled:')}={artifact_for(ref, None, _say_line)}"


def _say_line(line: str) -> None:
    typer.secho(line, err=True)


def _say_choice(engine, as_json: bool) -> None:
    if engine.choice is not None and not as_json:
        typer.secho(f"[{engine.choice}]", err=True, dim=True)


def _where(engine) -> dict[str, Any]:
    """Which backend, device, format and quantization a run used (for --json and the stderr line)."""
    quant = engine.manifest.get("quantization") or {}
    return {"backend": engine.backend.name, "device": engine.device, "format": engine.manifest.get("format"),
            "quant": quant.get("label") or quant.get("scheme")}


def _report(engine, result, prompt_mode: str | None = None) -> None:
    """The numbers a person wants after a reply, on stderr so that stdout stays the text alone."""
    if result is None:
        return
    where = _where(engine)
    mode = {"raw": "; raw prompt" + ("" if engine.manifest.get("chat_template") else " (no chat template)"),
            "chat": "", None: ""}[prompt_mode]
    n = result.tokens_out
    speed = f"{result.decode_tok_s:.1f} tok/s, " if n > 1 else ""  # decode speed needs two tokens
    grammar, compiled = result.constraint, ""
    if grammar:
        compiled = ("grammar cached, " if grammar["cached"]
                    else f"grammar compiled in {grammar['compile_ms']:.0f} ms, ")
    typer.secho(f"[{n} token{'' if n == 1 else 's'}, TTFT {1000 * result.ttft_s:.0f} ms, {speed}{compiled}"
                f"{result.finish_reason}; {where['backend']} on {where['device']}, "
                f"{where['format']} {where['quant']}{mode}]", err=True, dim=True)
    if result.budget is not None:
        verdict, limits = result.budget, engine.budget
        if verdict.met:
            typer.secho(f"[budget {limits}: PASS]", err=True, fg=typer.colors.GREEN)
        else:
            typer.secho(f"[budget {limits}: FAIL, {limits.describe_miss(result.metrics, verdict)}]",
                        err=True, fg=typer.colors.RED)


CHAT_HELP = '''/help             this list
/clear            forget the conversation (a system message stays)
/system TEXT      set the system message and start over
/set              show the sampling settings; /set NAME VALUE changes one
                  (temperature, top_k, top_p, min_p, repeat_penalty, frequency_penalty,
                  presence_penalty, seed, max_tokens)
/bye              leave (Ctrl-D too)
"""               begin a message of several lines; end it with """ (a paste is one message)
Ctrl-C stops a reply; at the prompt it leaves.'''
CHAT_SETTINGS = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,
                 "repeat_penalty": float, "frequency_penalty": float, "presence_penalty": float,
                 "seed": int, "max_tokens": int}


class _Prompt:
    """The chat's input: line editing, history (kept under edgekit's cache) and bracketed paste
    through readline on a terminal; plain lines from a pipe. \"\"\" opens a message of several lines."""

    def __init__(self) -> None:
        self.history = None
        if sys.stdin.isatty():
            try:
                import readline
            except ImportError:  # Windows without pyreadline: input() still works, without editing
                return
            from edgekit.cache import cache_root

            readline.parse_and_bind("set enable-bracketed-paste on")  # a paste arrives as one message
            self.history = cache_root() / "chat-history"
            with contextlib.suppress(OSError):
                readline.read_history_file(self.history)
            readline.set_history_length(1000)

    def save(self) -> None:
        if self.history is not None:
            import readline

            with contextlib.suppress(OSError):
                self.history.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(self.history)

    def read(self) -> str:
        """One message (EOFError at the end of input); the history is saved as it grows."""
        self.save()
        line = input("> ")
        if not line.lstrip().startswith('"""'):
            return line.strip()
        text = line.lstrip()[3:]
        if text.rstrip().endswith('"""'):
            return text.rstrip()[:-3].strip()
        parts = [text]
        while True:
            more = input("... ")
            if more.rstrip().endswith('"""'):
                parts.append(more.rstrip()[:-3])
                return "\n".join(parts).strip()
            parts.append(more)


@app.command()
def chat(
    artifact: Annotated[Path | None, typer.Argument(
        help="artifact directory or model reference (a bundled name, hub id or checkpoint folder, "
             f"converted once); or several, comma-separated, with --budget (default: {BUNDLED_DEFAULT})",
        show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", "--n-predict")] = 256,
    temperature: TempOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repeat_penalty: RepeatOpt = None,
    frequency_penalty: FreqOpt = None,
    presence_penalty: PresenceOpt = None,
    seed: SeedOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="a system message to start with")] = None,
    budget: BudgetOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    ctx_size: CtxOpt = None,
) -> None:
    """Interactive chat in the terminal: line editing and history, triple quotes for several lines,
    /help for the commands (Ctrl-C stops a reply; /bye or Ctrl-D ends it). When the conversation
    outgrows the context window, its oldest turns are dropped (the system message stays)."""
    from edgekit.engine import load

    limits = _budget(budget)
    try:
        with load(_variants(artifact or BUNDLED_DEFAULT), device=device, n_ctx=ctx_size, threads=threads,
                  budget=limits) as engine:
            _say_choice(engine, False)
            sampling = _sampling(engine, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                 presence_penalty=presence_penalty)
            sampling["max_tokens"], sampling["seed"] = max_tokens, seed
            messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
            prompt = _Prompt()
            typer.secho(f"chatting with {engine.path.name} ({engine.backend.name} on {engine.device}); "
                        '/help for commands, """ for several lines, /bye or Ctrl-D to leave', err=True,
                        dim=True)
            while True:
                try:
                    line = prompt.read()
                except EOFError:
                    break
                if not line:
                    continue  # a stray Enter asks nothing
                if line.startswith("/"):
                    command, _, rest = line.partition(" ")
                    if command == "/bye":
                        break
                    messages = _chat_command(command, rest.strip(), messages, sampling)
                    continue
                messages.append({"role": "user", "content": line})
                reply, stream = "", None
                try:  # Ctrl-C stops this reply, even while the template renders; at the prompt, the chat
                    stream = engine.chat(messages, stream=True, truncate="oldest", **sampling)
                    for piece in stream:
                        reply += piece
                        typer.echo(piece, nl=False)
                except ContextOverflowError as exc:  # this message alone is too long: say so, go on
                    messages.pop()
                    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
                    continue
                except KeyboardInterrupt:
                    if stream is not None:
                        stream.close()
                    typer.echo(" [stopped]", err=True, nl=False)
                typer.echo("")
                if stream is not None:
                    _report(engine, stream.result)
                    dropped = stream.result.dropped_messages if stream.result else 0
                    if dropped:  # the context is full: the oldest turns leave the conversation for good
                        typer.secho(f"[the {dropped} oldest messages left the conversation to fit the "
                                    f"context of {engine.context_length} tokens]", err=True, dim=True)
                        lead = 1 if messages and messages[0]["role"] == "system" else 0
                        del messages[lead:lead + dropped]
                messages.append({"role": "assistant", "content": reply})
    except KeyboardInterrupt:  # at the prompt: the chat ends, as Ctrl-D does, with the usual 130
        typer.echo("", err=True)
        raise typer.Exit(130) from None
    except EdgekitError as exc:
        _fail(exc, False)


def _chat_command(command: str, rest: str, messages: list[dict[str, str]],
                  sampling: dict[str, Any]) -> list[dict[str, str]]:
    """A /command typed in the chat: answered by edgekit, never sent to the model. Returns the
    conversation it leaves."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    if command == "/help":
        typer.echo(CHAT_HELP, err=True)
    elif command == "/clear":
        typer.secho("[the conversation is cleared]", err=True, dim=True)
        return system
    elif command == "/system":
        if not rest:
            typer.echo(f"system: {system[0]['content'] if system else '(none)'}", err=True)
            return messages
        typer.secho("[new system message; the conversation starts over]", err=True, dim=True)
        return [{"role": "system", "content": rest}]
    elif command == "/set":
        name, _, value = rest.partition(" ")
        if not name:
            typer.echo("  ".join(f"{k}={sampling.get(k)}" for k in CHAT_SETTINGS), err=True)
        elif name not in CHAT_SETTINGS or not value.strip():
            typer.secho(f"usage: /set NAME VALUE, NAME one of {', '.join(CHAT_SETTINGS)}", err=True,
                        fg=typer.colors.RED)
        else:
            from edgekit.runtimes.base import GenerationOptions

            try:
                parsed = CHAT_SETTINGS[name](value.strip())
                trial = {**sampling, name: parsed}
                GenerationOptions(**{k: v for k, v in trial.items() if k in CHAT_SETTINGS})
            except (ValueError, EdgekitError) as exc:
                typer.secho(f"error: {name}: {exc}", err=True, fg=typer.colors.RED)
            else:
                sampling[name] = parsed
                typer.secho(f"[{name} = {parsed}]", err=True, dim=True)
    else:
        typer.secho(f"unknown command {command}; /help lists them", err=True, fg=typer.colors.RED)
    return messages


@app.command()
def verify(
    artifact: Annotated[Path, typer.Argument(help="artifact directory")],
    reference: Annotated[str | None, typer.Option(
        "--reference", help="the source checkpoint (directory or hub id); default: the one edgekit.json "
                            "names")] = None,
    reference_kind: RefKindOpt = "auto",
    eval_file: EvalFileOpt = None,
    max_kl: MaxKlOpt = None,
    min_top1: MinTop1Opt = None,
    min_cosine: MinCosOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    no_save: Annotated[bool, typer.Option(
        "--no-save", help="do not record the report in edgekit.json")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Measure what a conversion lost against its source and grade it; exit 1 when it fails its gate
    (edgekit.verify)."""
    from edgekit.quality.verify import verify as run_verify

    try:
        with _StageProgress(enabled=not as_json and sys.stderr.isatty()) as progress:
            report = run_verify(artifact, reference, reference_kind=reference_kind, eval_file=eval_file,
                                max_kl=max_kl, min_top1=min_top1, min_cosine=min_cosine, device=device,
                                threads=threads, save=not no_save, progress=progress)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    data = report.to_dict()
    if as_json:
        _emit({"report": data}, True, "")
    else:
        _print_fidelity(data)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def profile(
    artifacts: Annotated[list[Path], typer.Argument(help="artifact directories: the variants to compare")],
    budget: BudgetOpt = None,
    prompt_tokens: Annotated[int, typer.Option(
        "--prompt-tokens", "-p", help="prompt length in tokens")] = 256,
    gen_tokens: Annotated[int, typer.Option("--gen-tokens", "-n", help="tokens generated per run")] = 128,
    runs: Annotated[int, typer.Option("--runs", "-r", help="measured runs per variant")] = 5,
    device: Annotated[str, typer.Option("--device", help="device(s), comma-separated: auto, cpu, cuda, "
                                                         "apple")] = "auto",
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print one CSV row per variant")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="print a Markdown table")] = False,
    report_dir: Annotated[Path | None, typer.Option(
        "--report", help="also write profile.json, profile.png and index.html into this folder")] = None,
) -> None:
    """Measure each variant on this machine (load time, size, peak memory, TTFT, TPOT, ITL, prefill
    and decode speed, % of the memory bandwidth limit) and judge it against --budget; exit 1 when a
    budget is given and no variant meets it (edgekit.profile)."""
    from edgekit.quality.profiling import profile as run_profile

    limits = _budget(budget)
    devices = [d.strip() for d in device.split(",") if d.strip()]
    try:
        if report_dir is not None:  # checked before the measuring, which it would otherwise lose
            from edgekit.paths import writable_folder

            writable_folder(report_dir, "--report")
        with _RunProgress(enabled=not (as_json or as_csv or as_markdown) and sys.stderr.isatty()) as progress:
            report = run_profile(artifacts, limits, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
                                 runs=runs, devices=devices, threads=threads, progress=progress)
        if report_dir is not None:
            from edgekit.quality.profiling import write_report

            page = write_report(report, report_dir)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    if report_dir is not None and not (as_json or as_csv or as_markdown):
        typer.echo(f"report: {page}", err=True)
    if as_json:
        _emit(report.to_dict(), True, "")
    elif as_csv:
        typer.echo(report.csv(), nl=False)
    elif as_markdown:
        typer.echo(report.markdown())
    else:
        _print_profile(report)
    if limits is not None and not report.any_passed:
        raise typer.Exit(1)


class _RunProgress:
    """One rich bar over variants x runs, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.progress, self.task = enabled, None, None

    def __enter__(self) -> _RunProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=Console(stderr=True))
            self.progress.start()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task("profiling", total=total)
        self.progress.update(self.task, completed=done, description=f"profiling {stage}")

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_profile(report) -> None:
    from rich.console import Console
    from rich.table import Table

    hw = report.hardware
    s = report.settings
    title = (f"{hw['cpu']}, {hw['cores']} cores, {hw['memory_gb']} GB, copy {hw['copy_bandwidth_gbs']} GB/s; "
             f"{s['prompt_tokens']} prompt + {s['gen_tokens']} generated tokens, {s['runs']} runs"
             + (f"; budget {report.budget}" if report.budget else ""))
    console = Console(width=min(100, max(60, _terminal_width())))
    verdict = report.verdict()
    console.print(verdict, style="bold green" if verdict.startswith("ship") else "bold", markup=False)
    for warning in report.warnings():
        console.print(f"warning: {warning}", style="yellow", markup=False)
    # the figures people decide by, in 100 columns; --json, --csv, --markdown and --report have all
    table = Table(title=title, title_justify="left")
    columns = [("variant", None), ("budget", "budget"), ("TTFT ms", "ttft_p50_ms"),
               ("TPOT ms", "tpot_p50_ms"), ("decode tok/s", "tg_avg_ts"), ("RSS MB", "peak_rss_mb"),
               ("MB", "size_mb"), ("fidelity", None)]
    for title, _ in columns:
        table.add_column(title, overflow="fold", max_width=28 if title in ("variant", "fidelity") else None)
    for v, name, row in zip(report.variants, report.names(), report.rows(), strict=True):
        cells = [name] + ["" if row[key] is None else str(row[key]) for _, key in columns[1:-1]]
        cells.append(report.fidelity(v).replace("measured ", ""))
        if row["error"]:
            cells[1] = f"error: {row['error']}"
        table.add_row(*cells)
    console.print(table)


class _SummaryProgress:
    """rich bars on stderr: the model calls of the document being summarized (with an ETA), and the
    files of a folder run."""

    def __init__(self, enabled: bool, files: int = 0) -> None:
        self.enabled, self.files, self.progress = enabled, files, None
        self.steps = self.file_bar = None

    def __enter__(self) -> _SummaryProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            # transient: the bars leave the screen when they stop, so the summary that streams next
            # (or a folder run's report) starts on a clean line
            self.progress = Progress(TextColumn("{task.description:<40.40}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)
            self.progress.start()
            if self.files > 1:
                self.file_bar = self.progress.add_task("files", total=self.files)
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self.steps is None:
            self.steps = self.progress.add_task(stage, total=total)
        elif done == 0 and self.progress.tasks[self.steps].completed > 0:  # the next file starts over
            self.progress.reset(self.steps, total=total)
        self.progress.update(self.steps, completed=done, total=total, description=stage)

    def file_done(self, done: int) -> None:
        if self.progress is not None and self.file_bar is not None:
            self.progress.update(self.file_bar, completed=done)

    def stop(self) -> None:
        """Take the bars off the terminal for good (the summary streams next, on stdout)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


@app.command()
def summarize(
    inputs: Annotated[list[Path], typer.Argument(
        help="documents (.txt .md .html .pdf .docx) and folders of them", show_default=False)],
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="artifact directory of an instruct model (default: the bundled SmolLM2 as "
                              "ONNX int4, converted once into the cache)")] = None,
    words: Annotated[int, typer.Option("--words", "-w", help="length of each summary, in words")] = 150,
    fmt: Annotated[str, typer.Option("--format", "-f", help="txt, md or json")] = "md",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="folder for the summaries, one per document (NAME.EXT.FORMAT); a rerun skips "
                            "documents already summarized the same way")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="look into subfolders")] = False,
    follow_links: Annotated[bool, typer.Option(
        "--follow-links", help="follow links inside a folder that lead out of it")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume", help="skip documents already summarized the same way in --out")] = True,
    strategy: Annotated[str, typer.Option(
        "--strategy", help="map-reduce (partial summaries combined) or refine (one running summary)")
    ] = "map-reduce",
    chunk_tokens: Annotated[int, typer.Option(
        "--chunk-tokens", help="largest chunk in tokens (less when the context is smaller)")] = 1024,
    overlap: Annotated[int, typer.Option("--overlap", help="tokens shared by consecutive chunks")] = 128,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    ctx_size: CtxOpt = None,
    parallel: Annotated[int, typer.Option(
        "--parallel", "-np", help="streams the model decodes at once: a document's chunks summarized "
        "together (the context split between them)")] = 1,
    ray: Annotated[bool, typer.Option(
        "--ray", help="spread the documents over Ray workers (a local Ray runtime, or --ray-address)")
    ] = False,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="join this Ray cluster: auto or HOST:PORT (implies --ray)")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Ray workers (default: the cluster's CPUs / --cpus-per-worker)")] = None,
    cpus_per_worker: Annotated[int, typer.Option(
        "--cpus-per-worker", help="CPUs per Ray worker, also its engine's threads")] = 1,
    memory_per_worker: Annotated[str | None, typer.Option(
        "--memory-per-worker", help="memory Ray reserves per worker, e.g. 2GB")] = None,
    max_attempts: Annotated[int, typer.Option(
        "--max-attempts", help="Ray: tries per document before it is reported failed")] = 3,
    time_limit: Annotated[float | None, typer.Option(
        "--time-limit", help="Ray: seconds one document may take")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print the result as JSON (one document: the summary with its chunks, timings and "
                       "token counts; several: the run's report)")] = False,
) -> None:
    """Summarize documents offline with a local model, streaming the summary as it is written
    (edgekit.summarize / edgekit.summarize_many; --ray: with edgekit.RayExecutor). Exit 1 if any
    document failed."""
    from edgekit.engine import load
    from edgekit.summaries.summarizer import FORMATS, collect, default_model, summarize_many
    from edgekit.summaries.summarizer import summarize as run_summarize

    try:
        if fmt not in FORMATS:
            raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
        bars = not as_json and sys.stderr.isatty()
        ignored: list[tuple[str, str]] = []
        files = collect(inputs, recursive, out, follow_links, ignored)
        if not as_json:
            for name, why in ignored:
                typer.secho(f"not read: {name}: {why}", err=True, fg=typer.colors.YELLOW)
        distributed = ray or ray_address is not None
        single = out is None and len(files) == 1 and not inputs[0].is_dir() and not distributed
        if model is None:
            with _StageProgress(enabled=bars) as progress:
                model = default_model(progress, _say_line)
        if not single:
            executor = None
            if distributed:
                from edgekit.summaries.cluster import RayExecutor

                executor = RayExecutor(address=ray_address, workers=workers, cpus_per_worker=cpus_per_worker,
                                       memory_per_worker=memory_per_worker, max_attempts=max_attempts,
                                       time_limit=time_limit)
            with _SummaryProgress(bars, len(files)) as progress:
                def on_file(record, i: int, n: int) -> None:
                    progress.file_done(i + 1)
                    if not as_json:
                        _say_file(record, fmt, out is None)

                run = summarize_many(inputs, model, out, words, recursive=recursive, resume=resume, fmt=fmt,
                                     strategy=strategy, chunk_tokens=chunk_tokens, overlap=overlap,
                                     device=device, n_ctx=ctx_size, threads=threads, progress=progress,
                                     on_file=on_file, executor=executor, follow_links=follow_links,
                                     parallel=parallel)
        else:
            as_json = as_json or fmt == "json"
            with load(model, device=device, n_ctx=ctx_size, threads=threads, parallel=parallel) as engine, \
                    _SummaryProgress(bars) as progress:
                streamed = _StreamOut(enabled=not as_json, heading=fmt == "md", path=files[0][0],
                                      on_start=progress.stop)
                result = run_summarize(files[0][0], engine, words, strategy=strategy,
                                       chunk_tokens=chunk_tokens, overlap=overlap, progress=progress,
                                       on_text=streamed)
            if as_json:
                _emit({"summary": result.to_dict()}, True, "")
            else:
                streamed.finish(result, fmt)
            return
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, as_json)
    data = run.to_dict()
    if out is None:  # no folder to write to: the summaries go with the report
        for record, row in zip(run.files, data["files"], strict=True):
            row["summary"] = record.summary.summary if record.summary else None
    counts = data["counts"]
    human = (f"{counts['ok']} summarized, {counts['skipped']} already done, {counts['failed']} failed"
             + (f"; summaries in {out}" if out is not None else ""))
    if as_json:
        _emit({"run": data}, True, "")
    else:
        typer.secho(human, err=True, fg=typer.colors.RED if run.failed else None)
    if run.failed:
        raise typer.Exit(1)


class _StreamOut:
    """The final summary on stdout as the model writes it (after a Markdown heading with --format md)."""

    def __init__(self, enabled: bool, heading: bool, path: Path, on_start: Callable[[], None] | None = None,
                 ) -> None:
        self.enabled, self.heading, self.path, self.started = enabled, heading, path, False
        self.on_start = on_start  # the progress bars leave the terminal before the text starts

    def __call__(self, piece: str) -> None:
        if not self.enabled:
            return
        if not self.started:
            self.started = True
            if self.on_start is not None:
                self.on_start()
            if self.heading:
                typer.echo(f"# Summary of {self.path.name}\n")
        typer.echo(piece, nl=False)

    def finish(self, result, fmt: str) -> None:
        if not self.started:  # nothing streamed (a fallback): print it whole
            self(result.summary)
        typer.echo("")
        if fmt == "md":
            typer.echo(f"\n{result.footer()}")
        t = result.timings
        chunks = result.document["chunks"]
        typer.secho(f"[{chunks} chunk{'' if chunks == 1 else 's'}, {result.document['tokens']} tokens; model "
                    f"{t['model_s']:.1f} s (prefill {t['prefill_s']:.1f}, decode {t['decode_s']:.1f}), "
                    f"outside the model {t['outside_s']:.1f} s; {result.model['backend']} on "
                    f"{result.model['device']}]",
                    err=True, dim=True)
        for warning in result.warnings:
            typer.secho(f"[{warning}]", err=True, dim=True)


def _say_file(record, fmt: str, to_stdout: bool) -> None:
    """One line per finished file on stderr; without --out the summary itself on stdout."""
    if record.status == "failed":
        typer.secho(f"failed  {record.error}", err=True, fg=typer.colors.RED)
        return
    if record.status == "skipped":
        typer.secho(f"skip    {record.path} (already summarized: {record.output})", err=True, dim=True)
        return
    typer.secho(f"ok      {record.path}" + (f" -> {record.output}" if record.output else "")
                + f" ({record.seconds:.1f} s)", err=True)
    if to_stdout and record.summary is not None:
        typer.echo(record.summary.render(fmt))


@app.command()
def serve(
    models: Annotated[list[str], typer.Argument(
        help="artifact directories to serve, each as PATH (named after its folder) or NAME=PATH",
        show_default=False)],
    host: Annotated[str, typer.Option("--host", help="address to bind; other than loopback needs --api-key")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8080,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="EDGEKIT_API_KEY",
        help="require 'Authorization: Bearer KEY' (env EDGEKIT_API_KEY)")
    ] = None,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="requests waiting for one model before the server answers 429")] = 64,
    parallel: Annotated[int | None, typer.Option(
        "--parallel", "-np", show_default=False,
        help="answers each model decodes at once, the context split between them (default: 4 where "
             "each keeps 1024 tokens, else 1)")] = None,
    max_body: Annotated[int, typer.Option("--max-body", help="largest request body in bytes")
                        ] = 4 * 1024 * 1024,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host",
        help="a host name accepted besides localhost in the Host and Origin headers (repeatable)")] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    ctx_size: CtxOpt = None,
) -> None:
    """An OpenAI-compatible server on this machine: /v1/chat/completions, /v1/completions (both with
    SSE streaming), /v1/embeddings, /v1/models, /health, /metrics (edgekit.serve)."""
    from edgekit.server.app import ServerConfig, listen
    from edgekit.server.app import serve as run_server

    config = ServerConfig(host=host, port=port, api_key=api_key, max_queue=max_queue, max_body_bytes=max_body,
                          allowed_hosts=tuple(allow_host or ()))

    def ready(engines) -> None:
        names = ", ".join(f"{n} ({e.manifest.get('format')} {e.backend.name} on {e.device}"
                          + (f", {e.backend.parallel} streams of {e.context_length} tokens"
                             if e.backend.parallel > 1 else "") + ")" for n, e in engines.items())
        shown = f"[{host}]" if ":" in host else host
        typer.secho(f"serving {names} at http://{shown}:{port}/v1 (Ctrl-C stops)", err=True)

    try:
        config.check()  # a bad port or address before any model is converted or loaded
        listen(config.host, config.port).close()
        run_server([_served(m) for m in models], config, device=device, n_ctx=ctx_size, threads=threads,
                   ready=ready, parallel=parallel)
    except (EdgekitError, KeyboardInterrupt) as exc:
        _fail(exc, False)


@app.command("list")
def list_artifacts(
    root: Annotated[Path, typer.Argument(help="folder to look in (three levels deep)")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="print the artifacts as JSON")] = False,
) -> None:
    """The edgekit artifacts under a folder: format, architecture, quantization, size
    (edgekit.find_artifacts)."""
    from edgekit.artifact import find_artifacts

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
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    ctx_size: CtxOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the vectors as JSON")] = False,
) -> None:
    """One vector per text, one line each (edgekit.load(...).embed)."""
    from edgekit.engine import load

    try:
        with load(artifact, device=device, n_ctx=ctx_size, threads=threads) as engine:
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
    from edgekit.hardware import devices as detect

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

"""edgekit.load(): open an artifact on a local backend and generate, chat or embed.

GGUF artifacts run through llama.cpp, ONNX ones through ONNX Runtime. The Engine adds what every
backend shares, once: the artifact's chat template (rendered in jinja2's sandbox, in a child
process with limits on time, memory and size, so both backends see the same prompt text), stop
strings, UTF-8-safe streaming, cancellation, one lock so calls from several threads take turns,
metrics (the words of docs/architecture.md) and the latency budget.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.artifact import read_manifest
from edgekit.errors import (
    ArtifactError,
    BackendError,
    ChatTemplateError,
    ContextOverflowError,
    DeviceUnavailableError,
    InvalidOptionError,
    LatencyBudgetExceeded,
)
from edgekit.metrics import BudgetVerdict, DecodeMetrics, LatencyBudget, peak_rss_mb
from edgekit.structured import NO_PLAN, TOOL_CLOSE, TOOL_OPEN, Plan, ToolCall, read_reply, repeated_call

DEVICES = ("auto", "cpu", "cuda", "apple")
# chat(truncate="oldest") drops, before rendering, the turns past this many characters a token
# from the end: no tokenizer packs more into one token, so they could never fit the window
FIT_CHARS_PER_TOKEN = 64
# Sampling where neither the caller nor the checkpoint's generation_config sets a value: llama.cpp's
# interactive defaults, which keep small instruct models from rambling (the CLI's run and chat use them)
SAMPLING_FALLBACK = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}


@dataclass
class TokenLogprob:
    """One generated token's log-probability under the model (raw logits, before temperature and the
    other sampling settings), and the likeliest alternatives at that step: (id, bytes, log-prob)."""

    token_id: int
    piece: bytes  # the token's text as raw bytes (a piece of a UTF-8 character, for some)
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "token": self.piece.decode("utf-8", "replace"),
                "logprob": self.logprob, "top": [{"token_id": i, "token": b.decode("utf-8", "replace"),
                                                  "logprob": lp} for i, b, lp in self.top]}


@dataclass
class GenerationResult:
    text: str
    # "stop" (end token or stop string), "length", "tool_calls" (the reply called tools), "cancelled"
    # or "budget" (a raise-mode budget cut it)
    finish_reason: str
    metrics: DecodeMetrics
    budget: BudgetVerdict | None = None  # set when the engine has a LatencyBudget
    token_ids: tuple[int, ...] = ()  # the generated tokens (stop strings cut text, not these)
    dropped_messages: int = 0  # chat(truncate="oldest"): how many of the oldest messages left the prompt
    logprobs: tuple[TokenLogprob, ...] | None = None  # with logprobs=N: one per token of token_ids
    tool_calls: tuple[ToolCall, ...] = ()  # chat(tools=...): the calls the reply made (text: its words)
    # with a response_format or tools: {"compile_ms": the grammar's compile time (part of TTFT; 0 when
    # it was compiled before), "cached": whether it was}
    constraint: dict[str, Any] | None = None

    # the headline numbers, straight from the metrics
    tokens_in = property(lambda self: self.metrics.tokens_in)
    tokens_out = property(lambda self: self.metrics.tokens_out)
    ttft_s = property(lambda self: self.metrics.ttft_s)
    decode_tok_s = property(lambda self: self.metrics.decode_tok_s)

    def to_dict(self) -> dict[str, Any]:
        out = {"text": self.text, "finish_reason": self.finish_reason, **self.metrics.to_dict(),
               "budget": self.budget.to_dict() if self.budget else None,
               "dropped_messages": self.dropped_messages}
        if self.logprobs is not None:
            out["logprobs"] = [t.to_dict() for t in self.logprobs]
        if self.constraint is not None:
            out["constraint"] = self.constraint
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        return out

    def json(self) -> Any:
        """The reply parsed as JSON (what a response_format of json_object or json_schema makes)."""
        import json

        try:
            return json.loads(self.text)
        except ValueError as exc:
            why = " (it was cut at max_tokens)" if self.finish_reason == "length" else ""
            raise InvalidOptionError(f"the reply is not JSON{why}: {exc}") from None


class Stream:
    """Text pieces as they are generated; `.result` once exhausted; `.cancel()` from any thread.

    `close()` (or leaving a `with` block) ends the generation where it is and frees the engine
    for the next call at once; a stream read to the end frees it by itself.
    """

    def __init__(self, events: Iterator[str | GenerationResult], cancel: threading.Event,
                 state: dict[str, Any] | None = None) -> None:
        self._events, self._cancel = events, cancel
        self._state = state if state is not None else {}  # the generation so far, kept by the engine
        self.result: GenerationResult | None = None
        self._reader: int | None = None  # the thread iterating the stream, while it does

    def __iter__(self) -> Iterator[str]:
        finished = False
        self._reader = threading.get_ident()
        try:
            for event in self._events:
                if isinstance(event, GenerationResult):
                    self.result = event
                else:
                    yield event
            finished = True
        except LatencyBudgetExceeded as exc:  # raise mode: the result so far is still the stream's result
            self.result, finished = exc.result, True
            raise
        finally:
            self._reader = None
            if not finished:  # the loop broke, Ctrl-C landed or the iterator was dropped: free the engine
                self.close()

    def cancel(self) -> None:
        """Stop the generation; from any thread. From the thread reading the stream (or when none is),
        the engine is free for the next call at once; a reader in another thread stops at its next
        token and frees it then."""
        self.close()

    def __del__(self) -> None:  # a stream dropped half-read frees the engine, whoever holds the rest
        try:
            self.close()
        except Exception:  # never raise from a finalizer
            pass

    def _stopped(self) -> GenerationResult | None:
        """The result of a generation ended early from outside (close, Ctrl-C): what it had made."""
        st = self._state
        if "start" not in st:
            return None
        metrics = DecodeMetrics.from_times(st["start"], st["times"], time.perf_counter(), st["tokens_in"])
        text, calls = read_reply(st["text"]) if st.get("calls") else (st["text"], ())  # calls made so far
        return GenerationResult(text, "cancelled", metrics, None, tuple(st["tokens"]), st.get("dropped", 0),
                                tool_calls=calls)

    def close(self) -> None:
        """Stop generating and release the engine (the native context) now. From a thread other than
        the one reading the stream it only asks: closing a generator another thread is about to resume
        would break that thread's loop; the reader stops at its next token instead."""
        self._cancel.set()
        reader = self._reader
        if reader is not None and reader != threading.get_ident():
            return
        close = getattr(self._events, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # "generator already executing": being read in another thread right now
                return
        if self.result is None:
            self.result = self._stopped()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | Path | Sequence[str | Path], device: str = "auto", n_ctx: int | None = None,
         budget: LatencyBudget | None = None, threads: int | None = None, parallel: int = 1) -> Engine:
    """Open an artifact directory (verifying its files against edgekit.json) on a backend.

    Several paths: the variants of one model. Each is measured briefly on this machine (or read from
    the profile cached for it and these files) and the most faithful one that meets `budget` is
    opened; `engine.choice` says what was measured and why. NoVariantFits when none does.

    device: "auto" picks the best device the backend really has, "cpu"/"cuda"/"apple" insist
    (an absent device is a DeviceUnavailableError, never a silent fallback). n_ctx: the context
    window (default: the artifact's, at most 4096). threads: CPU threads (default: every core; fewer
    keep a busy machine steady). budget: checked on every call; each result says whether it was met
    and by how much. parallel: streams decoded together (llama.cpp; ONNX on the CPU); the context window
    is split between them, as llama.cpp's server splits its context among slots, and calls from several
    threads (or generate() with a list of prompts) run side by side instead of taking turns.
    """
    for name, value in (("n_ctx", n_ctx), ("threads", threads), ("parallel", parallel)):
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidOptionError(f"{name} must be a whole number >= 1, not {value!r}")
    if not isinstance(path, str | Path):
        from edgekit.quality.choice import choose

        paths = list(path)
        if not paths:
            raise InvalidOptionError("load() got an empty list of artifacts")
        picked, choice = choose(paths, budget, device, threads)
        engine = load(picked, device, n_ctx, budget, threads, parallel)
        engine.choice = choice
        return engine
    root = Path(path)
    manifest = read_manifest(root)
    fidelity = manifest.get("fidelity") or {}
    if fidelity.get("passed") is False:
        import warnings

        from edgekit.errors import FidelityWarning

        why = "; ".join(map(str, fidelity.get("failures", [])))
        warnings.warn(f"{root} failed its fidelity check ({why}); its output may be wrong", FidelityWarning,
                      stacklevel=2)
    return open_checked(root, manifest, device, n_ctx, threads, budget, parallel)


def open_checked(root: Path, manifest: dict[str, Any], device: str = "auto", n_ctx: int | None = None,
                 threads: int | None = None, budget: LatencyBudget | None = None,
                 parallel: int = 1) -> Engine:
    """An Engine on a manifest already read and checked (load() does that; a conversion verifying the
    files it has just written and hashed skips the second read)."""
    if device not in DEVICES:
        raise DeviceUnavailableError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    from edgekit.runtimes.registry import backend_for

    cls = backend_for(str(manifest.get("format")), str(manifest.get("task", "text-generation")), str(root))
    chosen = cls.auto_device()[0] if device == "auto" else device
    if chosen not in cls.devices:
        raise DeviceUnavailableError(f"{cls.name} cannot run on '{chosen}'; "
                                     f"it knows {', '.join(sorted(cls.devices))}")
    backend = cls(root, manifest, chosen, n_ctx, threads)
    if parallel > 1:
        try:
            backend.set_parallel(parallel)
        except BaseException:
            backend.close()
            raise
    return Engine(root, manifest, backend, chosen, budget)


class Engine:
    def __init__(self, root: Path, manifest: dict[str, Any], backend, device: str,
                 budget: LatencyBudget | None = None) -> None:
        self.path, self.manifest, self.backend = root, manifest, backend
        self.device, self.budget = device, budget
        self._lock = threading.Lock()  # one native context: calls from several threads take turns
        # a backend decoding several streams together (parallel > 1) runs them at once instead; close()
        # waits for those still running
        self._gate = threading.Condition()
        self._active = 0
        self._running: set[threading.Event] = set()  # the cancel events of the generations running
        self._state = threading.Lock()  # guards the chat template and the chats still rendering
        self._template = None  # a ChatTemplate, made on the first chat
        self._rendering: set[threading.Event] = set()  # the cancel events of chats rendering their prompt
        self._closed = self._backend_closed = False
        self.choice = None  # a profiling.Choice when load() picked this artifact among several

    # ---- text generation ------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], max_tokens: int = 128, temperature: float = 0.0,
                 stream: bool = False, stop: Sequence[str] = (), seed: int | None = None,
                 add_special: bool = True, response_format: Any = None,
                 **sampling: Any) -> GenerationResult | Stream | list:
        """Complete `prompt`. stream=True returns a Stream of text pieces; otherwise a GenerationResult.
        A list of prompts gives a list of results: decoded together on an engine loaded with parallel
        > 1, one after another otherwise.

        sampling: top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty,
        ignore_eos, logprobs (N: result.logprobs holds each token's log-probability and its N likeliest
        alternatives) (GenerationOptions). response_format: the text must match a JSON schema or regex,
        as chat()'s (the prompt is not changed: say what you want in it).
        """
        from edgekit.structured import plan

        self._check_open()
        sampling["plan"] = plan(response_format)
        if isinstance(prompt, list | tuple):
            if stream:
                raise InvalidOptionError("stream=True takes one prompt; several prompts give a list of "
                                         "results (stream=False), or stream each from a thread of its own")
            if not prompt:
                raise InvalidOptionError("generate() got an empty list of prompts")
            return self._many(list(prompt), max_tokens=max_tokens, temperature=temperature, stop=stop,
                              seed=seed, add_special=add_special, **sampling)
        if not isinstance(prompt, str):
            raise InvalidOptionError(f"prompt must be a str or a list of str, not {type(prompt).__name__}; "
                                     "for a conversation use chat()")
        _check_text(prompt, "the prompt")
        return self._generate(prompt, threading.Event(), "prompt", max_tokens=max_tokens,
                              temperature=temperature, stream=stream, stop=stop, seed=seed,
                              add_special=add_special, **sampling)

    def _many(self, prompts: list[Any], **kwargs: Any) -> list[GenerationResult]:
        """Each prompt's result, in order. With a batching backend one thread reads every stream in turn
        (each read runs the next step for all of them); otherwise each runs to its end in turn."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                hint = "; for a conversation use chat()" if isinstance(prompt, dict) else ""
                raise InvalidOptionError(f"prompts[{i}] is {type(prompt).__name__}, not a str{hint}")
            _check_text(prompt, f"prompts[{i}]")
        streams = [self._generate(p, threading.Event(), "prompt", stream=True, **kwargs) for p in prompts]
        try:
            if self.backend.parallel == 1:
                for stream in streams:
                    for _ in stream:
                        pass
            else:
                readers = {i: iter(stream) for i, stream in enumerate(streams)}
                end = object()
                while readers:
                    for i in list(readers):
                        if next(readers[i], end) is end:
                            del readers[i]
        finally:
            for stream in streams:
                stream.close()
        return [stream.result for stream in streams]

    def _generate(self, prompt: str, cancel: threading.Event, source: str, max_tokens: int = 128,
                  temperature: float = 0.0, stream: bool = False, stop: Sequence[str] = (),
                  seed: int | None = None, add_special: bool = True, dropped: int = 0,
                  plan: Plan = NO_PLAN, **sampling: Any) -> GenerationResult | Stream:
        from edgekit.runtimes.base import GenerationOptions

        if isinstance(stop, str):
            stop = (stop,)
        try:
            options = GenerationOptions(max_tokens=max_tokens, temperature=temperature, seed=seed,
                                        stop=tuple(stop), grammar=plan.grammar, **sampling)
        except TypeError as exc:
            raise InvalidOptionError(f"unknown sampling option ({exc}); use top_k, top_p, min_p, "
                                     "repeat_penalty, frequency_penalty, presence_penalty, "
                                     "ignore_eos, logprobs") from None
        if not all(isinstance(s, str) for s in options.stop):
            raise InvalidOptionError("stop must be a list of str")
        if self.manifest.get("task") == "feature-extraction":
            raise InvalidOptionError(f"{self.path} is an embedding model: use embed() (edgekit embed), "
                                     "not generate() or chat()")
        if prompt == "" and not add_special:  # nothing to tokenize and no BOS: fail now, even for a stream
            raise InvalidOptionError(_empty_prompt_message(source))
        state: dict[str, Any] = {"dropped": dropped, "calls": plan.calls}
        events = self._run(prompt, options, add_special, cancel, source, state)
        if stream:
            return Stream(events, cancel, state)
        return next(e for e in events if isinstance(e, GenerationResult))

    def chat(self, messages: list[dict[str, Any]] | str, max_tokens: int = 128, temperature: float = 0.0,
             stream: bool = False, truncate: str | None = None, response_format: Any = None,
             tools: Sequence[dict[str, Any]] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool = False, **kwargs: Any) -> GenerationResult | Stream:
        """Render the artifact's chat template and generate the assistant's reply.

        messages: [{"role": "user", "content": "..."}, ...], or one str as a single user message.
        truncate: what to do when the conversation and max_tokens exceed the context window. None
        raises ContextOverflowError; "oldest" drops the oldest turns (a user message and the replies
        after it) until it fits, keeping the system messages and the last turn, and says how many
        messages went in result.dropped_messages (the CLI's chat and the server do this).
        cancel() while the template renders ends the call with finish_reason "cancelled" and no text.

        response_format, tools, tool_choice, parallel_tool_calls: OpenAI's (and a pydantic class, or
        {"type": "regex", "regex": ...}); decoding is held to them, calls come in result.tool_calls,
        one per reply unless parallel_tool_calls=True (docs/guide.md). What cannot be enforced is a
        SchemaError naming it.
        """
        from edgekit.errors import RenderCancelled
        from edgekit.runtimes.chat_template import validate_messages
        from edgekit.structured import plan, prepare, template_renders_tools

        if truncate not in (None, "oldest"):
            raise InvalidOptionError(f"truncate must be None or 'oldest', not {truncate!r}")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        wants = plan(response_format, tools, tool_choice, parallel_tool_calls)
        template_tools = template_renders_tools(str(self.manifest.get("chat_template") or ""))
        given = validate_messages(messages)
        messages = prepare(given, wants, template_tools)
        shown = list(wants.tools) if wants.tools and template_tools else None  # the template states them
        added_system = messages[0]["role"] == "system" and given[0].get("role") != "system"

        def render(messages: list[dict[str, Any]]) -> tuple[str, int]:
            if truncate == "oldest" and type(max_tokens) is int:
                return self._fit(messages, max_tokens, shown)
            return self.render_chat(messages, shown), 0

        start = time.perf_counter()
        cancel = threading.Event()
        with self._state:
            self._rendering.add(cancel)
        dropped = 0
        try:
            try:
                prompt, dropped = render(messages)
            except ChatTemplateError as exc:
                if isinstance(exc, RenderCancelled) or cancel.is_set() or not added_system:
                    raise
                # a template that refuses a system message (Gemma's): the plan's words go to the first
                # user message instead
                prompt, dropped = render(prepare(given, wants, template_tools, system=False))
        except RenderCancelled:
            self._check_open()  # closed while rendering: say so
            cancel.set()
        except ChatTemplateError:
            self._check_open()  # "the chat template is closed" means the engine is
            if not cancel.is_set():  # a cancel() that came before the child started may still land here
                raise
        finally:
            with self._state:
                self._rendering.discard(cancel)
        if cancel.is_set():
            metrics = DecodeMetrics.from_times(start, [], time.perf_counter(), 0)
            result = GenerationResult("", "cancelled", metrics)
            if stream:
                done = Stream(iter([result]), cancel)
                done.result = result
                return done
            return result
        # the template already wrote BOS if the model wants one
        return self._generate(prompt, cancel, "chat", max_tokens=max_tokens, temperature=temperature,
                              stream=stream, add_special=False, dropped=dropped, plan=wants, **kwargs)

    def _fit(self, messages: list[dict[str, Any]], max_tokens: int,
             tools: list[dict[str, Any]] | None = None) -> tuple[str, int]:
        """The prompt of the fewest oldest turns dropped that leaves room for max_tokens; (prompt, how
        many messages were dropped). The last turn alone too long: ContextOverflowError.

        The work is bounded by the context window, not by the conversation: turns that cannot fit
        (more messages than the window has tokens, or more text than it holds at FIT_CHARS_PER_TOKEN)
        leave before anything is rendered or counted."""
        limit = self.context_length
        lead = next((i for i, m in enumerate(messages) if _role(m) != "system"), len(messages))
        system, rest = messages[:lead], messages[lead:]  # the system prompt at the start always stays
        keep, size = 0, 0  # how many of the latest messages could fit at all
        for m in reversed(rest):
            content = m.get("content") if isinstance(m, dict) else None
            size += len(content) if isinstance(content, str) else 0
            if keep and (keep >= limit or size > limit * FIT_CHARS_PER_TOKEN):
                break
            keep += 1
        cut = len(rest) - keep
        if cut == 0:
            prompt = self.render_chat(messages, tools)
            if self._count_capped(prompt, limit)[0] + max_tokens <= limit:
                return prompt, 0
        # each candidate keeps rest[start:], a start at each user message (a turn), the last one kept
        starts = sorted({i for i, m in enumerate(rest) if i >= cut and i > 0 and _role(m) == "user"}
                        | {max(0, len(rest) - 1)})
        best: tuple[str, int] | None = None
        shortest, at_least = 0, False
        lo, hi = 0, len(starts) - 1
        while lo <= hi:  # the earliest start (fewest dropped) whose prompt fits
            mid = (lo + hi) // 2
            candidate = self.render_chat(system + rest[starts[mid]:], tools)
            n, bound = self._count_capped(candidate, limit)
            if n + max_tokens <= limit:
                best, hi = (candidate, starts[mid]), mid - 1
            else:
                lo, shortest, at_least = mid + 1, n, bound
        if best is None:  # even the last message alone leaves no room
            raise ContextOverflowError(shortest, max_tokens, limit, at_least)
        return best

    def _count_capped(self, text: str, cap: int) -> tuple[int, bool]:
        """(tokens of `text`, False), or, when it is certainly over `cap`, (a count over `cap` taken
        from a prefix, True): a megabyte prompt is refused after tokenizing what the window could
        hold, not all of it."""
        over = self._over(text, cap)
        if over is not None:
            return over, True
        return (len(self.backend.tokenize(text, False)) if text else 0), False

    def _over(self, text: str, cap: int) -> int | None:
        """A token count over `cap` from a prefix of a text far longer than `cap` tokens could be
        written in plainly (8 characters a token); None when the prefix does not settle it."""
        head = cap * 8 + 64
        if len(text) <= 2 * head:
            return None
        n = len(self.backend.tokenize(text[:head], False)) - 16  # margin: a token cut at the end
        return n if n > cap else None

    def cancel(self) -> None:
        """Stop the generation running now (from another thread); it ends with finish_reason "cancelled".
        On an engine decoding several streams (parallel > 1) every running generation stops: to stop one,
        close its Stream.

        A chat() still rendering its prompt stops too (the template's child process is killed).
        """
        with self._state:
            rendering, template = list(self._rendering), self._template
        for event in rendering:
            event.set()
        if rendering and template is not None:
            template.cancel()
        for running in list(self._running):
            running.set()

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt the artifact's chat template makes of these messages (with the generation prompt);
        tools: OpenAI's tool objects, for a template that states them itself.

        The template renders in a child process, within 5 s and 4 million characters; a template
        that fails is a ChatTemplateError, messages of the wrong shape an InvalidOptionError.
        """
        from edgekit.runtimes.chat_template import ChatTemplate, validate_messages

        self._check_open()
        messages = validate_messages(messages)
        source = self.manifest.get("chat_template")
        if not source:
            raise ArtifactError(f"{self.path}: the artifact has no chat template; use generate() instead")
        special = self.manifest.get("tokenizer") or {}
        with self._state:
            self._check_open()
            template, stale = self._template, None
            if template is None or template.source != source:  # made on first use; remade if replaced
                stale, template = template, ChatTemplate(source, special.get("bos_text") or "",
                                                         special.get("eos_text") or "")
                self._template = template
        if stale is not None:
            stale.close()
        return template.render(messages, add_generation_prompt=True, tools=tools)

    def generation_defaults(self) -> dict[str, Any]:
        """The sampling this model should run with: what its checkpoint's generation_config.json sets
        (temperature, top_k, top_p, min_p, repeat_penalty; do_sample false means greedy) over
        SAMPLING_FALLBACK. generate() and chat() stay greedy unless told; pass these to sample as the
        CLI does: eng.chat(messages, **eng.generation_defaults())."""
        return {**SAMPLING_FALLBACK, **self.model_sampling()}

    def model_sampling(self) -> dict[str, Any]:
        """Only what the checkpoint's generation_config.json sets; {} without one."""
        import json

        names = {e.get("name") for e in self.manifest.get("files", [])}
        if "generation_config.json" not in names:
            return {}
        try:
            config = json.loads((self.path / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        if not isinstance(config, dict):
            return {}
        keys = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                "repetition_penalty": "repeat_penalty"}
        from edgekit.runtimes.base import GenerationOptions

        out = {}
        for theirs, ours in keys.items():
            value = config.get(theirs)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            try:  # a value no sampler takes (top_p 5, a negative temperature) is not a default
                GenerationOptions(**{ours: value})
            except InvalidOptionError:
                continue
            out[ours] = value
        if config.get("do_sample") is False:
            out["temperature"] = 0.0
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.path}: this engine is closed; open the artifact again with "
                               "edgekit.load()")

    def _run(self, prompt: str, options, add_special: bool, cancel: threading.Event,
             source: str, state: dict[str, Any]) -> Iterator[str | GenerationResult]:
        """Yield text pieces as they become final, then one GenerationResult."""
        if self.backend.parallel > 1:  # batched by the backend: no turns to take
            with self._gate:
                self._check_open()
                self._active += 1
                self._running.add(cancel)
            try:
                yield from self._generate_locked(prompt, options, add_special, cancel, source, state)
            finally:
                with self._gate:
                    self._active -= 1
                    self._running.discard(cancel)
                    self._gate.notify_all()
            return
        with self._lock:
            self._check_open()  # closed while this call waited for the lock
            self._running.add(cancel)
            try:
                yield from self._generate_locked(prompt, options, add_special, cancel, source, state)
            finally:
                self._running.discard(cancel)

    def _generate_locked(self, prompt: str, options, add_special: bool, cancel: threading.Event,
                         source: str, state: dict[str, Any]) -> Iterator[str | GenerationResult]:
        """state: kept up to date with the text, token times and ids, so that a Stream closed from
        outside (or ended by Ctrl-C) still has a result."""
        start = time.perf_counter()
        limit = self.backend.context_length
        over = self._over(prompt, limit)  # a huge prompt costs what the window holds, not more
        if over is not None:
            raise ContextOverflowError(over, options.max_tokens, limit, at_least=True)
        ids = self.backend.tokenize(prompt, add_special)
        if not ids:
            raise InvalidOptionError(_empty_prompt_message(source))
        if len(ids) + options.max_tokens > limit:
            raise ContextOverflowError(len(ids), options.max_tokens, limit)
        constraint = None
        if options.grammar is not None:  # compiled before the first token: part of TTFT, and reported
            began = time.perf_counter()
            kept = self.backend.constraint_vocab().compile(options.grammar)[1]
            constraint = {"compile_ms": round(1000 * (time.perf_counter() - began), 3), "cached": kept}
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted, times, tokens, reason = "", 0, [], [], "stop"
        calls_on = bool(state.get("calls"))  # a tool call is not the reply's text: hidden from the stream
        opened = -1  # where the first tool call opens in the text (-1: none yet)
        held = options.stop + ((TOOL_OPEN,) if calls_on else ())  # prefixes held back while streaming
        state.update(start=start, tokens_in=len(ids), times=times, tokens=tokens, text="")
        budget = self.budget
        # raise mode stops as soon as a miss is certain: a late first token, or total time run out
        deadline_ttft = budget.ttft_ms if budget is not None and budget.mode == "raise" else None
        deadline_total = budget.total_ms if budget is not None and budget.mode == "raise" else None
        events = self.backend.generate(ids, options)
        longest = max((len(x) for x in options.stop), default=0)
        logprobs: list[TokenLogprob] | None = None if options.logprobs is None else []
        for event in events:
            now = time.perf_counter()
            times.append(now)
            tokens.append(event.token_id)
            if logprobs is not None and event.logprob is not None:
                logprobs.append(TokenLogprob(event.token_id, event.piece, event.logprob, tuple(
                    (i, self.backend.token_bytes(i), lp) for i, lp in event.top)))
            before = len(text)
            text += decoder.decode(event.piece)
            state["text"] = text
            # earlier text held no stop string: a new one must end in this piece (no rescan per token)
            if calls_on and opened < 0:
                opened = text.find(TOOL_OPEN, max(0, before - len(TOOL_OPEN) + 1))
            cut = _stop_at(text, options.stop, max(0, before - longest + 1))
            if cut is not None and not 0 <= opened <= cut:  # a stop string never cuts a call
                text = text[:cut]
                break
            if opened >= 0 and text.find(TOOL_CLOSE, max(0, before - len(TOOL_CLOSE) + 1)) >= 0:
                again = repeated_call(text)  # the same call once more: the calls are done
                if again is not None:
                    text = text[:again]
                    break
            safe = len(text) - _max_partial(text, held)  # hold back a possible stop (or call) prefix
            if opened >= 0:
                safe = min(safe, opened)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if cancel.is_set():
                reason = "cancelled"
                break
            elapsed_ms = 1000 * (now - start)
            if ((deadline_ttft is not None and len(times) == 1 and elapsed_ms > deadline_ttft)
                    or (deadline_total is not None and elapsed_ms > deadline_total)):
                reason = "budget"
                break
        else:
            text += decoder.decode(b"", final=True)
            reason = "length" if len(times) >= options.max_tokens else "stop"
        events.close()  # release the backend's generator (and its native state) now
        calls: tuple[ToolCall, ...] = ()
        if calls_on:
            text, calls = read_reply(text)
            if calls and reason == "stop":
                reason = "tool_calls"
        if len(text) > emitted:
            yield text[emitted:]
        metrics = DecodeMetrics.from_times(start, times, time.perf_counter(), len(ids))
        result = GenerationResult(text, reason, metrics, None, tuple(tokens), state.get("dropped", 0),
                                  None if logprobs is None else tuple(logprobs), calls, constraint)
        if budget is not None:
            result.budget = budget.judge(metrics, peak_rss_mb() if budget.rss_mb else None)
            budget.enforce(metrics, result.budget, result)  # raise mode: raises with the result
        yield result

    # ---- tokens ----------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """The context window in tokens: prompt and generated text together."""
        return int(self.backend.context_length)

    def count_tokens(self, text: str, add_special: bool = False) -> int:
        """How many tokens the model's own tokenizer makes of `text` (what fits the context window)."""
        self._check_open()
        if not isinstance(text, str):
            raise InvalidOptionError(f"count_tokens() takes a str, not {type(text).__name__}")
        return len(self.backend.tokenize(text, add_special)) if text else 0

    # ---- embeddings ------------------------------------------------------------------------
    def embed(self, texts: Sequence[str] | str):
        """One vector per text ([n, dim]), pooled as the artifact says (e.g. mean for MiniLM); one str
        gives one vector ([dim])."""
        self._check_open()
        if isinstance(texts, str):
            return self.embed([texts])[0]
        if not isinstance(texts, Sequence):
            raise InvalidOptionError(f"embed() takes a list of texts, not {type(texts).__name__}")
        if len(texts) == 0:
            raise InvalidOptionError("embed() got an empty list; pass at least one text")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidOptionError(f"texts[{i}] is {type(text).__name__}, not a str; "
                                         "embed() takes a list of str")
            _check_text(text, f"texts[{i}]")
        with self._lock:
            self._check_open()
            return self.backend.embed(list(texts))

    # ---- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and stop the chat template's child process; later calls raise BackendError.

        A chat() still rendering its prompt stops at once; a generation running in another thread
        finishes first. Closing twice is harmless.
        """
        with self._state:
            self._closed = True
            template, self._template = self._template, None
        if template is not None:
            template.close()
        with self._gate:  # generations running side by side finish first
            while self._active:
                self._gate.wait()
        with self._lock:
            if not self._backend_closed:
                self._backend_closed = True
                self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_text(text: str, what: str) -> None:
    from edgekit.runtimes.chat_template import check_text

    check_text(text, what)


def _empty_prompt_message(source: str) -> str:
    if source == "chat":
        return ("the chat template rendered these messages to an empty prompt (no tokens); check the "
                "messages and the artifact's chat template")
    return ("the prompt is empty (it has no tokens); pass some text, or add_special=True if the model has a "
            "beginning-of-text token")


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


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None

"""Chat templates rendered in a child process, with limits on time, memory and output size.

A chat template is Jinja code that came with a checkpoint. jinja2's ImmutableSandboxedEnvironment
stops it from running Python code, but not from looping for hours (`range` inside `range`) or
from building a string of many gigabytes (`'x' * 10**10`, `'%09999999999d'|format(1)`, a doubling
`{% set ns.s = ns.s ~ ns.s %}` loop). So templates render in a persistent child process
(`python -m edgekit.runtimes.chat_template`, spoken to with one JSON object a line):

- the parent waits `timeout_s` for each render, then kills the child (and starts a new one for
  the next render); `ChatTemplate.cancel()` kills it from another thread;
- on Linux the child's address space is capped (RLIMIT_AS), so a memory bomb ends as a
  MemoryError inside the child and is reported as an error; the child dies with its parent;
- the output is counted while it is generated and stops at `max_chars`;
- the obvious one-shot bombs (`*`, `**`, `%` and padding widths far past max_chars) fail at once
  in the sandbox, before they allocate anything.

Every failure is a ChatTemplateError with a one-line message; messages of the wrong shape are an
InvalidOptionError. The environment matches transformers' apply_chat_template: trim_blocks,
lstrip_blocks, loop controls, `raise_exception`, `strftime_now` and its `tojson`.

jinja2 is imported only in the child (and never by `import edgekit`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from edgekit import children
from edgekit.children import Child, ChildExited, ChildTimeout
from edgekit.errors import ChatTemplateError, InvalidOptionError, RenderCancelled

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_CHARS = 4_000_000
DEFAULT_MEMORY_LIMIT_MB = 1024  # the child's whole address space: Python and jinja2 take ~50 MB of it
STARTUP_TIMEOUT_S = 60.0  # a fresh interpreter importing jinja2; generous for loaded machines
MAX_INT_BITS = 100_000  # integers a template may build (Python prints at most 4300 digits anyway)

# What check_template renders: no system message (some templates refuse one), roles alternating.
SAMPLE_CONVERSATION = [
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. How can I help?"},
    {"role": "user", "content": "What is 2 + 2?"},
]


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """The messages as plain dicts, or an InvalidOptionError saying how to pass them."""
    hint = 'pass a list of dicts such as [{"role": "user", "content": "Hello"}]'
    if isinstance(messages, (str, bytes)):
        raise InvalidOptionError(f"messages must be a list of messages, not a string; {hint}")
    if isinstance(messages, Mapping):
        raise InvalidOptionError(f"messages must be a list of messages, not a single dict; wrap it in a "
                                 f"list: {hint}")
    if not isinstance(messages, Sequence):
        raise InvalidOptionError(f"messages must be a list of messages, not {type(messages).__name__}; "
                                 f"{hint}")
    if not messages:
        raise InvalidOptionError(f"messages is empty; {hint}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidOptionError(f"messages[{i}] is {type(message).__name__}, not a dict; {hint}")
        role = message.get("role")
        if not isinstance(role, str):
            got = "missing" if "role" not in message else f"{type(role).__name__}, not a str"
            raise InvalidOptionError(f"messages[{i}]['role'] is {got}; {hint}")
        # content: a str, None (an assistant turn that only calls tools) or a list of parts
        # ([{"type": "text", "text": ...}]), as transformers' templates accept
        if "content" not in message and "tool_calls" not in message:
            raise InvalidOptionError(f"messages[{i}]['content'] is missing; {hint}")
        content = message.get("content")
        if not (content is None or isinstance(content, str | list | tuple)):
            raise InvalidOptionError(f"messages[{i}]['content'] is {type(content).__name__}; "
                                     f"use a str, None or a list of parts; {hint}")
        _check_texts(message, f"messages[{i}]")
        out.append(dict(message))
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(f"messages hold a value that is not plain data ({exc}); use str, numbers, "
                                 "lists and dicts") from None
    return out


def _check_texts(value: Any, what: str) -> None:
    """check_text on every string inside a message (parts, tool calls ...)."""
    if isinstance(value, str):
        check_text(value, what)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_texts(item, f"{what}[{key!r}]")
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            _check_texts(item, f"{what}[{n}]")


def check_text(text: str, what: str) -> None:
    """InvalidOptionError when text holds a lone surrogate (it cannot be encoded as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidOptionError(
            f"{what} contains a lone surrogate (U+{ord(text[exc.start]):04X} at index {exc.start}), which is "
            "not valid Unicode text; decode the input properly or drop it, e.g. "
            "text.encode('utf-8', 'replace').decode('utf-8')"
        ) from None


class ChatTemplate:
    """A chat template rendered in a child process, within a time limit and an output size.

    render() may be called from several threads (they take turns); cancel() and close() from any
    thread stop a render in progress at once.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "",
                 timeout_s: float | None = None, max_chars: int = DEFAULT_MAX_CHARS,
                 memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB) -> None:
        timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s  # read now: tests shorten it
        if not isinstance(source, str):
            raise ChatTemplateError(f"a chat template must be a str, not {type(source).__name__}")
        if not timeout_s > 0 or not max_chars > 0 or not memory_limit_mb > 0:
            raise InvalidOptionError("timeout_s, max_chars and memory_limit_mb must be positive")
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token
        self.timeout_s, self.max_chars, self.memory_limit_mb = timeout_s, max_chars, memory_limit_mb
        self._lock = threading.Lock()  # one render at a time: one child, one request in flight
        self._state = threading.Lock()  # guards the fields below, never held while waiting
        self._child: Child | None = None
        self._rendering = self._cancelled = self._closed = False

    # ---- the API ---------------------------------------------------------------------------
    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text; tools (OpenAI's tool objects) reach the template as its `tools` variable."""
        request = {
            "source": self.source, "messages": validate_messages(messages),
            "add_generation_prompt": bool(add_generation_prompt), "bos_token": self.bos_token,
            "eos_token": self.eos_token, "max_chars": self.max_chars,
        }
        if tools is not None:
            request["tools"] = [dict(t) for t in tools]
        with self._lock:
            with self._state:
                if self._closed:
                    raise ChatTemplateError("this chat template is closed")
                self._rendering, self._cancelled = True, False
            try:
                reply = self._exchange(request)
            except BaseException:  # cancel, timeout, crash, Ctrl-C: the child's state is unknown
                self._discard_child()
                raise
            finally:
                with self._state:
                    self._rendering = False
        if "error" in reply:
            raise ChatTemplateError(_describe(reply, self))
        text = reply["text"]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ChatTemplateError("the chat template produced text with a lone surrogate (e.g. a '\\ud800' "
                                    "escape), which is not valid Unicode; fix the template") from None
        return text

    @property
    def pid(self) -> int | None:
        """The child process's id, or None while none runs (before the first render, after close())."""
        child = self._child
        return child.pid if child is not None and child.alive() else None

    def cancel(self) -> None:
        """Stop the render in progress (from another thread): it raises RenderCancelled at once."""
        with self._state:
            if not self._rendering:
                return
            self._cancelled = True
            child = self._child
        if child is not None:
            child.kill()

    def close(self) -> None:
        """Stop the child process (and a render in progress, which raises RenderCancelled)."""
        with self._state:
            self._closed = True
            if self._rendering:
                self._cancelled = True
            child = self._child
        if child is not None:
            child.kill()
        with self._lock:  # a render in progress returns promptly: its child is dead
            self._discard_child()

    def __enter__(self) -> ChatTemplate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            child = self._child
            if child is not None:
                child.kill()
                child.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - best effort during garbage collection
            pass

    # ---- the child -------------------------------------------------------------------------
    def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        for attempt in (0, 1):  # a child that died on its own (not this request's fault) is replaced once
            child = self._start_child()
            try:
                reply = child.ask(request, self.timeout_s)
            except ChildTimeout:
                self._raise_if_cancelled()
                raise ChatTemplateError(
                    f"the chat template took longer than {self.timeout_s:g} s to render; it may loop "
                    "without end (nested loops over large ranges?): fix the template, or give a longer "
                    "timeout_s"
                ) from None
            except ChildExited as exited:
                self._raise_if_cancelled()
                self._discard_child()
                if attempt == 1:
                    raise ChatTemplateError(f"the chat template renderer crashed ({exited}) while rendering; "
                                            "the template may exhaust memory or recurse too deeply") from None
                continue
            self._raise_if_cancelled()  # even when the reply came: the child may be dying
            return reply
        raise AssertionError("unreachable")

    def _raise_if_cancelled(self) -> None:
        with self._state:
            cancelled, closed = self._cancelled, self._closed
        if cancelled:
            raise RenderCancelled("the chat template was closed while rendering" if closed
                                  else "rendering the chat template was cancelled")

    def _start_child(self) -> Child:
        """The running child, starting one (and waiting for it to be ready) when there is none."""
        if self._child is not None and self._child.alive():
            return self._child
        self._discard_child()
        try:
            # stderr: kept for a startup failure's message; the child points it at /dev/null once ready
            child = Child("edgekit.runtimes.chat_template", ["--memory-limit-mb", str(self.memory_limit_mb)],
                          stderr=subprocess.PIPE)
        except OSError as exc:
            raise ChatTemplateError(f"could not start the chat template renderer ({exc})") from exc
        with self._state:
            self._child = child
            cancelled = self._cancelled
        if cancelled:  # cancel() came while starting it, and found no child to kill
            child.kill()
        try:
            hello = child.receive(STARTUP_TIMEOUT_S)
        except (ChildTimeout, ChildExited):
            hello = None
        if hello is None or "ready" not in hello:
            self._raise_if_cancelled()
            code = children.stop(child.proc)
            why = (hello["message"] if hello is not None
                   else children.last_line(child.proc.stderr) or children.exit_words(code))
            raise ChatTemplateError(f"could not start the chat template renderer ({why})")
        return child

    def _discard_child(self) -> None:
        with self._state:
            child, self._child = self._child, None
        if child is not None:
            child.close()


def check_template(source: str, bos_token: str = "", eos_token: str = "") -> None:
    """Compile a chat template and render a short user/assistant/user conversation with it once,
    within the limits; ChatTemplateError when it cannot."""
    with ChatTemplate(source, bos_token, eos_token) as template:
        template.render(SAMPLE_CONVERSATION, add_generation_prompt=True)


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(reply: dict[str, Any], template: ChatTemplate) -> str:
    kind, message, line = reply.get("error"), _one_line(reply.get("message", "")), reply.get("line")
    at = f" at line {line}" if line else ""
    if kind == "syntax":
        return f"the chat template has a syntax error{at}: {message}"
    if kind == "security":
        return f"the chat template did something the sandbox forbids{at}: {message}"
    if kind == "raise_exception":
        return f"the chat template refused these messages: {message}"
    if kind == "too_long":
        return (f"the chat template's output passed {template.max_chars:,} characters; it may repeat text "
                "without end: fix the template, or give a larger max_chars")
    if kind == "too_large":
        return f"the chat template tried to build a value far too large{at}: {message}"
    if kind == "memory":
        return (f"the chat template ran out of memory{at} (the renderer may use {template.memory_limit_mb} "
                "MiB); it may build a huge string or list: fix the template")
    return f"the chat template failed to render{at}: {message}"


# ---- the child process ----------------------------------------------------------------------
class _Raised(Exception):
    """raise_exception() called by the template."""


class _TooLarge(Exception):
    """An operation that would build a value far past the limits."""


def _limit_memory(megabytes: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False  # macOS does not enforce RLIMIT_AS; the parent's timeout still holds
    try:
        import resource

        want = megabytes * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY and hard < want:
            want = hard
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
        return True
    except (ImportError, OSError, ValueError):
        return False


def _format_widths(fmt: str, args: Any) -> list[int]:
    """The widths and precisions a %-format string asks for (with '*' taken from args)."""
    import re

    found = []
    values = list(args) if isinstance(args, tuple) else [args]
    for m in re.finditer(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?", fmt):
        for group in m.groups():
            if group == "*":
                found.extend(v for v in values if isinstance(v, int))
            elif group:
                found.append(int(group))
    return found


def _brace_widths(fmt: str) -> list[int]:
    """The widths and precisions a str.format string asks for."""
    import re

    return [int(n) for spec in re.findall(r"\{[^{}]*?:([^{}]*)\}", fmt) for n in re.findall(r"\d+", spec)]


def _check_binop(operator: str, left: Any, right: Any, limit: int) -> None:
    sized = (str, bytes, list, tuple)
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, sized) and isinstance(n, int) and len(seq) * n > limit:
                what = "string" if isinstance(seq, (str, bytes)) else type(seq).__name__
                raise _TooLarge(f"repeating a {what} of length {len(seq):,} {n:,} times")
        if (isinstance(left, int) and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS):
            raise _TooLarge("multiplying integers of more than 100,000 bits")
    elif operator == "**":
        if (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
                and left.bit_length() * right > MAX_INT_BITS):
            base = left if left.bit_length() < 64 else "a large integer"
            raise _TooLarge(f"raising {base} to the power {right:,}")
    elif operator == "+":
        if isinstance(left, sized) and isinstance(right, sized) and len(left) + len(right) > limit:
            raise _TooLarge(f"joining values of {len(left):,} and {len(right):,} items")
    elif operator == "%" and isinstance(left, str):
        widths = _format_widths(left, right)
        if widths and max(widths) > limit:
            raise _TooLarge(f"a %-format width of {max(widths):,}")


def _check_str_method(owner: str, name: str, args: tuple, limit: int) -> None:
    """Refuse the str methods that would build a string far past the limit."""
    if name in ("center", "ljust", "rjust", "zfill"):
        if args and isinstance(args[0], int) and args[0] > limit:
            raise _TooLarge(f"padding a string to {args[0]:,} characters")
    elif name in ("format", "format_map"):
        widths = _brace_widths(owner)
        if widths and max(widths) > limit:
            raise _TooLarge(f"a format width of {max(widths):,}")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        if len(new) > len(old):
            count = owner.count(old) if old else len(owner) + 1
            if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                count = min(count, args[2])
            if len(owner) + count * (len(new) - len(old)) > limit:
                raise _TooLarge(f"a replace() growing a string past {limit:,} characters")


def _environment():
    """transformers' chat template environment, with the size checks above."""
    import json as _json
    from datetime import datetime

    from jinja2 import filters, nodes, pass_eval_context
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Environment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        max_chars = DEFAULT_MAX_CHARS

        def call_binop(self, context, operator, left, right):
            _check_binop(operator, left, right, self.max_chars)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's signature
            owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                _check_str_method(owner, name, args, __self.max_chars)
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value):  # jinja2 >= 3.1.5 wraps str.format when it is looked up
            owner = getattr(value, "__self__", None)
            if isinstance(owner, str):
                _check_str_method(owner, getattr(value, "__name__", ""), (), self.max_chars)
            return super().wrap_str_format(value)

    class Generation(Extension):
        """transformers' {% generation %} ... {% endgeneration %} marks assistant text for training
        masks; for rendering a prompt it is a no-op block."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    env = Environment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation])

    def raise_exception(message: Any = "") -> None:
        raise _Raised(str(message))

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    def center(value: Any, width: int = 80) -> str:
        if isinstance(width, int) and width > env.max_chars:
            raise _TooLarge(f"centering in {width:,} characters")
        return filters.do_center(value, width)

    def indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        if isinstance(width, int) and width > env.max_chars:
            raise _TooLarge(f"indenting by {width:,} characters")
        return filters.do_indent(value, width, first, blank)

    @pass_eval_context
    def replace(eval_ctx, value: Any, old: Any, new: Any, count: Any = None) -> str:
        _check_str_method(str(value), "replace", (str(old), str(new), count), env.max_chars)
        return filters.do_replace(eval_ctx, value, old, new, count)

    def format_(value: Any, *args: Any, **kwargs: Any) -> str:
        widths = _format_widths(str(value), tuple(args))
        if widths and max(widths) > env.max_chars:
            raise _TooLarge(f"a %-format width of {max(widths):,}")
        return filters.do_format(value, *args, **kwargs)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        if isinstance(indent, int) and indent > env.max_chars:
            raise _TooLarge(f"a JSON indent of {indent:,}")
        return _json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                           sort_keys=sort_keys)

    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    env.filters.update(center=center, indent=indent, format=format_, replace=replace, tojson=tojson)
    return env


def _template_line(exc: BaseException) -> int | None:
    import traceback

    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<template>"]
    return lines[-1] if lines else None


def _render_request(env, cache: dict, request: dict[str, Any]) -> dict[str, Any]:
    from jinja2 import TemplateSyntaxError
    from jinja2.exceptions import SecurityError

    limit = int(request["max_chars"])
    env.max_chars = limit
    source = request["source"]
    try:
        template = cache.get(source)
        if template is None:
            template = env.from_string(source)  # constant folding may run filters: inside the try
            cache.clear()  # one template per ChatTemplate: keep the last only
            cache[source] = template
        pieces, total = [], 0
        extra = {"tools": request["tools"]} if "tools" in request else {}  # absent: undefined, as before
        for piece in template.generate(messages=request["messages"],
                                       add_generation_prompt=request["add_generation_prompt"],
                                       bos_token=request["bos_token"], eos_token=request["eos_token"],
                                       **extra):
            total += len(piece)
            if total > limit:
                return {"error": "too_long", "message": f"more than {limit} characters"}
            pieces.append(piece)
        return {"text": "".join(pieces)}
    except TemplateSyntaxError as exc:
        return {"error": "syntax", "message": exc.message or str(exc), "line": exc.lineno}
    except _Raised as exc:
        return {"error": "raise_exception", "message": str(exc)}
    except SecurityError as exc:
        return {"error": "security", "message": str(exc), "line": _template_line(exc)}
    except _TooLarge as exc:
        return {"error": "too_large", "message": str(exc), "line": _template_line(exc)}
    except MemoryError as exc:
        pieces = []  # noqa: F841 - free what was rendered before replying
        return {"error": "memory", "message": "out of memory", "line": _template_line(exc)}
    except RecursionError as exc:
        return {"error": "render", "message": "recursion too deep (a macro calling itself?)",
                "line": _template_line(exc)}
    except Exception as exc:  # noqa: BLE001 - everything a template can do wrong, reported
        return {"error": "render", "message": f"{type(exc).__name__}: {exc}", "line": _template_line(exc)}


def _child_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgekit.runtimes.chat_template")
    parser.add_argument("--memory-limit-mb", type=int, default=DEFAULT_MEMORY_LIMIT_MB)
    args = parser.parse_args(argv)
    children.guard(ignore_interrupt=True)  # Ctrl-C is the parent's to handle; it then kills us
    limited = _limit_memory(args.memory_limit_mb)
    send = children.send
    try:
        env = _environment()
    except Exception as exc:  # noqa: BLE001 - e.g. jinja2 missing: the parent reports it
        send({"error": "startup", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"ready": True, "pid": os.getpid(), "memory_limited": limited})
    devnull = os.open(os.devnull, os.O_WRONLY)  # nothing may block on a stderr pipe nobody reads
    os.dup2(devnull, 2)
    cache: dict[str, Any] = {}
    for request in children.commands():
        try:
            reply = _render_request(env, cache, request)
        except MemoryError:
            reply = {"error": "memory", "message": "out of memory"}
        except Exception as exc:  # noqa: BLE001 - a malformed request
            reply = {"error": "request", "message": f"{type(exc).__name__}: {exc}"}
        try:
            send(reply)
        except MemoryError:
            send({"error": "memory", "message": "out of memory"})
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))

"""OpenAI's wire format, translated both ways: request bodies checked and turned into edgekit calls
(a bad one is an ApiError naming what is wrong), results turned into OpenAI's response objects and
stream chunks. Plain functions over dicts: no web framework here, so each is testable on its own."""

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from edgekit.errors import ContextOverflowError, EdgekitError, InvalidOptionError, SchemaError

DEFAULT_MAX_TOKENS = 256  # when a request sets none (OpenAI's own default runs to the context's end)

# OpenAI's sampling fields (and llama.cpp server's top_k, min_p, repeat_penalty) -> edgekit's options
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "seed": "seed",
}
# the ranges OpenAI enforces, where edgekit's own checks are wider
_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}

# The fields each route implements ("user" is written in the access log). Any other field is refused
# by name, unless its value asks for nothing (null, or one of the values in _NOTHING): a server that
# ignored a field would answer as if it had done what was asked.
_GENERATION = {"model", "user", "n", "stream", "stream_options", "max_tokens", "stop", "logprobs",
               *_SAMPLING}
FIELDS = {
    "chat": _GENERATION | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                           "tool_choice", "parallel_tool_calls"},
    "completion": _GENERATION | {"prompt"},
    "embedding": {"model", "user", "input", "encoding_format", "dimensions"},
}
_NOTHING: dict[str, tuple[Any, ...]] = {
    "logprobs": (False, 0), "top_logprobs": (0,), "logit_bias": ({},), "response_format": ({"type": "text"},),
    "tools": ([],), "tool_choice": ("none", "auto"), "parallel_tool_calls": (True, False), "echo": (False,),
    "best_of": (1,), "suffix": ("",), "store": (False,), "service_tier": ("auto", "default"),
}
_LATER = {  # what a refusal adds for the fields people ask for most
    "response_format": "structured output is for /v1/chat/completions",
    "tools": "tool calls are for /v1/chat/completions",
    "tool_choice": "tool calls are for /v1/chat/completions",
    "functions": "the legacy functions field is not implemented; use tools",
    "function_call": "the legacy function_call field is not implemented; use tool_choice",
    "top_logprobs": "the legacy completions take logprobs as a number instead",
    "logit_bias": "logit_bias is not implemented",
}


def check_fields(body: Mapping[str, Any], kind: str) -> None:
    """Every field of a request is one this route implements, or asks for nothing: else a 400 naming
    it (OpenAI's unsupported_parameter)."""
    allowed = FIELDS[kind]
    for key, value in body.items():
        if key in allowed or value is None or value in _NOTHING.get(key, ()):
            continue
        why = _LATER.get(key, "this server does not implement it")
        raise ApiError(400, f"'{key}' is not supported: {why}; leave it out", param=key,
                       code="unsupported_parameter")


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def api_error(exc: BaseException) -> ApiError:
    """Any exception as the HTTP error to answer with: edgekit's option and context errors are the
    client's (400), the rest the server's (500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidOptionError):
        return ApiError(400, str(exc))
    if isinstance(exc, EdgekitError):
        return ApiError(500, str(exc), kind="server_error")
    return ApiError(500, f"{type(exc).__name__}: {exc}", kind="server_error")


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) (in a worker thread), edgekit's errors turned into HTTP errors."""
    try:
        return fn(*args)
    except EdgekitError as exc:
        raise api_error(exc) from None


# requests

MAX_DEPTH = 32  # objects and lists inside each other: OpenAI's bodies need 5 or 6
MAX_INT_DIGITS = 18  # larger integers are no count, seed or limit anyone means


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body, which must be a JSON object of bounded depth, with finite numbers and no
    integer longer than MAX_INT_DIGITS digits: anything else is a 400 naming the problem."""
    try:
        data = json.loads(raw, parse_int=_small_int, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:  # the parser's own stack: thousands of brackets inside each other
        raise ApiError(400, f"the body nests lists and objects too deep (at most {MAX_DEPTH})") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    if _depth(data) > MAX_DEPTH:
        raise ApiError(400, f"the body nests lists and objects too deep (at most {MAX_DEPTH})")
    return data


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed body (without recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                break
            todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _small_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        digits = len(text.lstrip("-"))
        raise ValueError(f"an integer of {digits} digits; at most {MAX_INT_DIGITS} are allowed")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large for a number")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_model(name: Any, tasks: Mapping[str, str], task: str) -> str:
    """The served model a request names (tasks: name -> its task), which must do what `task` asks."""
    if not isinstance(name, str) or name not in tasks:
        raise ApiError(
            404,
            f"no model named {name!r}; this server has {', '.join(tasks)}",
            param="model",
            code="model_not_found",
        )
    if tasks[name] != task:
        embedder = tasks[name] == "feature-extraction"
        raise ApiError(
            400,
            f"'{name}' is {'an embedding model' if embedder else 'a text generator'}; use "
            f"{'/v1/embeddings' if embedder else '/v1/chat/completions'}",
            param="model",
        )
    return name


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """/v1/chat/completions' messages as edgekit's [{"role", "content"}] (developer is system), with
    an assistant's tool_calls and a tool result's tool_call_id."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(m: Any, i: int) -> dict[str, Any]:
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
        raise ApiError(
            400,
            f"messages[{i}] must be an object with role system, user, assistant or tool",
            param=f"messages[{i}]",
        )
    content = m.get("content")
    calls = m.get("tool_calls")
    if calls is not None:
        if m["role"] != "assistant":
            raise ApiError(400, f"messages[{i}].tool_calls: only an assistant message has them",
                           param=f"messages[{i}].tool_calls")
        return {"role": "assistant", "content": _text(content, i) if content is not None else None,
                "tool_calls": _tool_calls(calls, i)}
    if m["role"] == "tool":
        ident = m.get("tool_call_id")
        if not isinstance(ident, str):
            raise ApiError(400, f"messages[{i}].tool_call_id must be the id of the call it answers",
                           param=f"messages[{i}].tool_call_id")
        return {"role": "tool", "content": _text(content, i), "tool_call_id": ident}
    role = "system" if m["role"] == "developer" else m["role"]
    return {"role": role, "content": _text(content, i)}


def _tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's calls: [{"id", "type": "function", "function": {"name", "arguments"}}]."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise ApiError(400, f"{where} must be a list", param=where)
    out = []
    for n, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)
                and call.get("type", "function") == "function"
                and isinstance(fn.get("arguments"), str) and isinstance(call.get("id", ""), str)):
            raise ApiError(400, f'{where}[{n}] must be {{"id": ..., "type": "function", "function": '
                           '{"name": ..., "arguments": "<JSON text>"}}', param=f"{where}[{n}]")
        out.append({"id": call.get("id", ""), "type": "function",
                    "function": {"name": fn["name"], "arguments": fn["arguments"]}})
    return out


def _text(content: Any, i: int) -> str:
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]: the text parts joined
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
            raise ApiError(
                400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}]"
            )
        content = "".join(parts)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
    return content


def completion_prompt(body: dict[str, Any]) -> str:
    """/v1/completions' prompt: one string (or a list of exactly one)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")
    return prompt


# OpenAI's embeddings API takes token ids as well as text: ids of cl100k_base, the tokenizer of every
# OpenAI embedding model, which is what clients send (LangChain's OpenAIEmbeddings by default)
OPENAI_EMBEDDING_ENCODING = "cl100k_base"
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value)


def openai_token_text(arrays: list[list[int]]) -> list[str]:
    """The texts OpenAI's cl100k_base token ids stand for (tiktoken, with its encoding file cached on
    this machine, as the client that tokenized them had it); each model then tokenizes the text its
    own way. Anything that cannot be decoded is a 400 saying what to send instead."""
    instead = ("or send the text itself (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))")
    try:
        import tiktoken
    except ImportError:
        raise ApiError(400, "input: token ids are OpenAI's cl100k_base tokens; decoding them needs "
                       f"tiktoken on the server (pip install tiktoken), {instead}", param="input") from None
    try:
        encoding = tiktoken.get_encoding(OPENAI_EMBEDDING_ENCODING)
    except Exception as exc:  # no network and no cached file: requests' or tiktoken's own errors
        raise ApiError(400, f"input: token ids need tiktoken's {OPENAI_EMBEDDING_ENCODING} file, which is "
                       f"not cached on this machine and could not be fetched ({type(exc).__name__}); "
                       f"{instead}", param="input") from None
    texts = []
    for ids in arrays:
        bad = next((i for i in ids if not 0 <= i < encoding.n_vocab), None)
        if bad is not None:
            raise ApiError(400, f"input: {bad} is not a {OPENAI_EMBEDDING_ENCODING} token id "
                           f"(0 to {encoding.n_vocab - 1})", param="input")
        try:
            texts.append(encoding.decode(ids))
        except (KeyError, ValueError) as exc:
            raise ApiError(400, f"input: these token ids do not decode ({exc})", param="input") from None
    return texts


def embedding_input(body: dict[str, Any]) -> tuple[list[str], str]:
    """/v1/embeddings' texts and encoding format (float or base64). `input` is a string, a list of
    strings, or token ids (one list, or a list of lists) as OpenAI's API takes them."""
    texts = body.get("input")
    if _is_ids(texts):
        texts = [texts]
    elif isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, list) and len(texts) > MAX_EMBEDDING_INPUTS:
        raise ApiError(400, f"input: {len(texts)} inputs; at most {MAX_EMBEDDING_INPUTS} a request",
                       param="input")
    if isinstance(texts, list) and texts and all(_is_ids(t) for t in texts):
        texts = openai_token_text(texts)
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "input must be a string, a non-empty list of strings, or token ids (a list "
                       "of integers, or a list of such lists)", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be float or base64", param="encoding_format")
    return texts, fmt


def check_dimensions(body: Mapping[str, Any], size: int) -> None:
    """`dimensions` may only ask for the vector size the model has (nothing is truncated)."""
    wanted = body.get("dimensions")
    if wanted is not None and wanted != size:
        raise ApiError(400, f"dimensions: this model's vectors have {size}; it cannot give {wanted!r}",
                       param="dimensions", code="unsupported_value")


MAX_TOP_LOGPROBS = {"chat": 20, "completion": 5}  # as OpenAI allows on each route


def _logprobs(body: Mapping[str, Any], kind: str) -> int | None:
    """How many alternatives to return with each token's log-probability; None for none. Chat:
    `logprobs` true and `top_logprobs` 0-20; the legacy completions: `logprobs` 0-5."""
    value, top = body.get("logprobs"), body.get("top_logprobs")
    if kind == "chat":
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"logprobs must be true or false, not {value!r}", param="logprobs")
        if top is not None and not value:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if not value:
            return None
        top = 0 if top is None else top
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS["chat"]:
            raise ApiError(400, f"top_logprobs must be a whole number from 0 to "
                           f"{MAX_TOP_LOGPROBS['chat']}, not {top!r}",
                           param="top_logprobs")
        return top
    if value is None or value is False:
        return None
    most = MAX_TOP_LOGPROBS["completion"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ApiError(400, f"logprobs must be a whole number from 0 to {most}, not {value!r}",
                       param="logprobs")
    return value


def generation_options(body: dict[str, Any], defaults: Mapping[str, Any],
                       kind: str = "chat") -> dict[str, Any]:
    """Generation options from an OpenAI body (a "chat" or a legacy "completion" request), over the
    model's own sampling defaults; checked here so that a bad value is a 400 before anything queues."""
    from edgekit.runtimes.base import GenerationOptions

    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: one answer per request", param="n")
    options: dict[str, Any] = dict(defaults)
    top = _logprobs(body, kind)
    if top is not None:
        options["logprobs"] = top
    for theirs, ours in _SAMPLING.items():
        if body.get(theirs) is not None:
            value = body[theirs]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (ours in ("top_k", "seed") and not isinstance(value, int))
            ):
                raise ApiError(400, f"{theirs} must be a number, not {value!r}", param=theirs)
            low, high = _RANGES.get(theirs, (None, None))
            if low is not None and not low <= value <= high:
                raise ApiError(400, f"{theirs} must be between {low:g} and {high:g}, not {value!r}",
                               param=theirs, code="invalid_value")
            options[ours] = value
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, "user must be a string", param="user")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a whole number >= 1, not {max_tokens!r}", param="max_tokens")
    options["max_tokens"] = max_tokens
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ApiError(400, "stop must be a string or a list of up to 4 strings", param="stop")
    options["stop"] = stop
    try:
        GenerationOptions(**{k: v for k, v in options.items() if k != "stop"})
    except InvalidOptionError as exc:
        raise ApiError(400, str(exc)) from None
    if kind == "chat":
        options.update(_structure(body))
    return options


def _structure(body: Mapping[str, Any]) -> dict[str, Any]:
    """response_format, tools, tool_choice and parallel_tool_calls, checked and compiled now (a schema
    that cannot be enforced is a 400 naming it before anything queues); engine.chat() takes them."""
    from edgekit.structured import plan

    names = ("response_format", "tools", "tool_choice", "parallel_tool_calls")
    fields = {name: body[name] for name in names if body.get(name) is not None}
    try:
        plan(**fields)
    except SchemaError as exc:
        raise ApiError(400, str(exc), param=exc.field, code="invalid_schema") from None
    return fields


def streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether to answer as a stream, and whether that stream ends with a usage chunk."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, not {stream!r}", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object such as {\"include_usage\": true}",
                       param="stream_options")
    usage = (options or {}).get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false",
                       param="stream_options.include_usage")
    if options is not None and not stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
    return bool(stream), bool(stream and usage)


def generate(engine: Any, kind: str, payload: Any, options: dict[str, Any], stream: bool) -> Any:
    """The edgekit call for a chat (kind "chat") or a completion: a GenerationResult, or a Stream;
    chats drop their oldest turns to fit the context."""
    if kind == "chat":
        return engine.chat(payload, stream=stream, truncate="oldest", **options)
    return engine.generate(payload, stream=stream, **options)


# responses


def completion_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "edgekit"}


def models_list(names: Sequence[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(n, created) for n in names]}


def _finish(result: Any) -> str:
    return result.finish_reason if result.finish_reason in ("length", "tool_calls") else "stop"


def _calls(result: Any) -> list[dict[str, Any]]:
    """The tool calls of a result in a stream's delta form (an index on each)."""
    return [{"index": n, **call.to_dict()} for n, call in enumerate(getattr(result, "tool_calls", ()))]


def _usage(result: Any) -> dict[str, int]:
    return {
        "prompt_tokens": result.tokens_in,
        "completion_tokens": result.tokens_out,
        "total_tokens": result.tokens_in + result.tokens_out,
    }


def _logprobs_of(kind: str, result: Any) -> dict[str, Any] | None:
    """OpenAI's logprobs object for the tokens of a result: chat's `content` list, or the legacy
    completions' parallel lists; None when none were asked for."""
    tokens = getattr(result, "logprobs", None)
    if tokens is None:
        return None

    def text(piece: bytes) -> str:
        return piece.decode("utf-8", "replace")

    if kind == "chat":
        return {"content": [
            {"token": text(t.piece), "logprob": t.logprob, "bytes": list(t.piece),
             "top_logprobs": [{"token": text(b), "logprob": lp, "bytes": list(b)} for _, b, lp in t.top]}
            for t in tokens]}
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(text(t.piece))
    return {"tokens": [text(t.piece) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{text(b): lp for _, b, lp in t.top} for t in tokens], "text_offset": offsets}


def whole(kind: str, ident: str, model: str, result: Any) -> dict[str, Any]:
    """A whole (not streamed) chat.completion or text_completion."""
    base = {"id": ident, "created": int(time.time()), "model": model, "usage": _usage(result)}
    if kind == "chat":
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": _assistant(result),
                    "logprobs": _logprobs_of(kind, result),
                    "finish_reason": _finish(result),
                }
            ],
        }
    return {
        **base,
        "object": "text_completion",
        "choices": [{"index": 0, "text": result.text, "finish_reason": _finish(result),
                     "logprobs": _logprobs_of(kind, result)}],
    }


def _assistant(result: Any) -> dict[str, Any]:
    calls = getattr(result, "tool_calls", ())
    if not calls:
        return {"role": "assistant", "content": result.text}
    return {"role": "assistant", "content": result.text.strip() or None,  # words before the calls
            "tool_calls": [c.to_dict() for c in calls]}


def _chunk(kind: str, ident: str, model: str, delta: Any, finish: str | None = None,
           logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One stream chunk; delta None gives a chunk with no choices (the usage chunk's base)."""
    base = {"id": ident, "created": int(time.time()), "model": model}
    if kind == "chat":
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": logprobs,
                                             "finish_reason": finish}]
        return {**base, "object": "chat.completion.chunk", "choices": choices}
    choices = (
        [] if delta is None else [{"index": 0, "text": delta, "finish_reason": finish, "logprobs": logprobs}]
    )
    return {**base, "object": "text_completion", "choices": choices}


def stream_opening(kind: str, ident: str, model: str) -> list[str]:
    """The SSE data sent before the first token: a chat stream names the assistant's role first."""
    if kind != "chat":
        return []
    return [json.dumps(_chunk(kind, ident, model, {"role": "assistant", "content": ""}))]


def stream_event(
    kind: str, ident: str, model: str, what: str, value: Any, usage_in_stream: bool
) -> Iterator[str]:
    """The SSE data for one event of a generation: ("piece", text), ("error", exception), or
    ("done", result), which ends the stream (finish reason, the usage if asked for, [DONE])."""
    if what == "piece":
        delta = {"content": value} if kind == "chat" else value
        yield json.dumps(_chunk(kind, ident, model, delta))
    elif what == "error":
        yield json.dumps(api_error(value).body())
    else:
        if kind == "chat" and getattr(value, "tool_calls", ()):  # the calls, each whole, before the end
            yield json.dumps(_chunk(kind, ident, model, {"tool_calls": _calls(value)}))
        # the tokens' log-probabilities, when asked for, come whole with the finishing chunk
        yield json.dumps(_chunk(kind, ident, model, {} if kind == "chat" else "", _finish(value),
                                _logprobs_of(kind, value)))
        if usage_in_stream:
            yield json.dumps({**_chunk(kind, ident, model, None), "choices": [], "usage": _usage(value)})
        yield "[DONE]"


def embeddings(vectors: Sequence[Any], fmt: str, model: str, tokens: int) -> dict[str, Any]:
    """The /v1/embeddings answer: little-endian float32 vectors, as floats or base64."""
    import numpy as np

    data = []
    for i, v in enumerate(vectors):
        vec = np.asarray(v, dtype="<f4")
        value = base64.b64encode(vec.tobytes()).decode() if fmt == "base64" else [float(x) for x in vec]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }

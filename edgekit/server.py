"""`edgekit serve`: an OpenAI-compatible HTTP server over local artifacts (FastAPI + uvicorn).

/v1/chat/completions and /v1/completions (JSON or SSE streaming), /v1/embeddings, /v1/models,
/health. Each artifact is served under a name; requests to one engine wait their turn in arrival
order (answers never interleave), and past `max_queue` waiting requests the server answers 429 with
Retry-After. Safe by default: it binds 127.0.0.1; any other address needs an API key; without a key
the Host header must name this machine's loopback (DNS rebinding); bodies are bounded; a bad request
is a 400 in OpenAI's error shape, naming what is wrong; a client that disconnects mid-stream cancels
its generation and frees the engine for the next request.
"""

import asyncio
import base64
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ContextOverflowError, EdgekitError, InvalidOptionError, require

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
DEFAULT_MAX_TOKENS = 256  # when a request sets none (OpenAI's own default runs to the context's end)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 64  # requests waiting for one engine before 429
    max_body_bytes: int = 4 * 1024 * 1024
    allowed_hosts: Sequence[str] = ()  # Host header names accepted besides loopback (without a key)

    def check(self) -> None:
        self.allowed_hosts = tuple(h.strip().lower() for h in self.allowed_hosts)  # as Host is compared
        if not is_loopback(self.host) and not self.api_key:
            raise InvalidOptionError(
                f"binding {self.host} exposes the models to the network: give an API key "
                "(--api-key, or EDGEKIT_API_KEY), or bind 127.0.0.1"
            )
        for name, value in (
            ("port", self.port),
            ("max_queue", self.max_queue),
            ("max_body_bytes", self.max_body_bytes),
        ):
            if type(value) is not int or value < (0 if name == "port" else 1):
                raise InvalidOptionError(f"{name} must be a whole number >= 1, not {value!r}")


def host_name(header: str | None) -> str:
    """The name in a Host header, without its port ("[::1]:8080" -> "[::1]")."""
    header = (header or "").strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class _Slot:
    """One served engine: its name, the asyncio lock requests queue on, and how many wait."""

    name: str
    engine: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    seconds: float = 1.0  # a running average of request time, for Retry-After

    @property
    def task(self) -> str:
        return str(self.engine.manifest.get("task", "text-generation"))


class ApiError(Exception):
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


def model_names(paths: Sequence[str | Path]) -> dict[str, Path]:
    """NAME=PATH or PATH (named after its folder) -> {name: path}; two of one name are refused."""
    named: dict[str, Path] = {}
    for item in map(str, paths):
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path_ = Path(path)
        name = name or path_.resolve().name
        if name in named:
            raise InvalidOptionError(f"two models named '{name}'; name them: NAME=PATH")
        named[name] = path_
    return named


class _Guard:
    """Plain ASGI middleware (no per-chunk cost on streams): the Host header, the API key and the
    declared body size, checked before the app sees the request."""

    def __init__(self, app, config: ServerConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            error = self.check(scope)
            if error is not None:
                from starlette.responses import JSONResponse

                await JSONResponse(error.body(), error.status, headers=error.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, scope) -> ApiError | None:
        config = self.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not config.api_key and host_name(headers.get("host")) not in (*LOOPBACK, *config.allowed_hosts):
            return ApiError(
                403,
                f"Host '{headers.get('host')}' is not this machine's loopback; requests must "
                "name localhost or 127.0.0.1",
                code="host_not_allowed",
            )
        if config.api_key and scope.get("path") != "/health":
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), config.api_key.encode()):
                return ApiError(
                    401,
                    "missing or wrong API key (Authorization: Bearer KEY)",
                    kind="authentication_error",
                    code="invalid_api_key",
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return ApiError(
                413, f"the body is larger than {config.max_body_bytes} bytes", code="body_too_large"
            )
        return None


def create_app(engines: dict[str, Any], config: ServerConfig | None = None):
    """The FastAPI app serving these engines (name -> Engine). The caller owns the engines."""
    require("fastapi", "fastapi", "serve", "edgekit serve")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    config = config or ServerConfig()
    slots: dict[str, _Slot] = {}
    app = FastAPI(title="edgekit", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    def slot_for(name: Any, task: str) -> _Slot:
        if not slots:  # made inside the server's event loop (asyncio.Lock binds to it)
            for n, e in engines.items():
                slots[n] = _Slot(n, e)
        if not isinstance(name, str) or name not in slots:
            raise ApiError(
                404,
                f"no model named {name!r}; this server has {', '.join(engines)}",
                param="model",
                code="model_not_found",
            )
        slot = slots[name]
        if slot.task != task:
            embedder = slot.task == "feature-extraction"
            raise ApiError(
                400,
                f"'{name}' is {'an embedding model' if embedder else 'a text generator'}; use "
                f"{'/v1/embeddings' if embedder else '/v1/chat/completions'}",
                param="model",
            )
        return slot

    app.add_middleware(_Guard, config=config)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(
            ApiError(400, f"{where}: {first.get('msg', 'invalid')}", param=where or None).body(), 400
        )

    async def body_of(request: Request) -> dict[str, Any]:
        raw = bytearray()
        async for piece in request.stream():  # counted as it arrives: chunked bodies have no length
            raw += piece
            if len(raw) > config.max_body_bytes:
                raise ApiError(
                    413, f"the body is larger than {config.max_body_bytes} bytes", code="body_too_large"
                )
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object")
        return data

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(engines)}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": created, "owned_by": "edgekit"} for n in engines
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await body_of(request)
        slot = slot_for(body.get("model"), "text-generation")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", param="messages")
        messages = [_message(m, i) for i, m in enumerate(messages)]
        return await _respond(request, slot, body, "chat", messages)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        slot = slot_for(body.get("model"), "text-generation")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")
        return await _respond(request, slot, body, "completion", prompt)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await body_of(request)
        slot = slot_for(body.get("model"), "feature-extraction")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a non-empty list of strings", param="input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be float or base64", param="encoding_format")
        async with _turn(slot):
            vectors = await asyncio.to_thread(_call, slot.engine.embed, texts)
            tokens = sum(slot.engine.count_tokens(t) for t in texts)
        import numpy as np

        data = []
        for i, v in enumerate(vectors):
            vec = np.asarray(v, dtype="<f4")
            value = base64.b64encode(vec.tobytes()).decode() if fmt == "base64" else [float(x) for x in vec]
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": slot.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _respond(request: Request, slot: _Slot, body: dict[str, Any], kind: str, payload):
        options = _options(body, slot.engine)
        stream = body.get("stream") is True
        usage_in_stream = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if not stream:
            async with _turn(slot):
                result = await asyncio.to_thread(_call, _generate, slot.engine, kind, payload, options, None)
            return _whole(kind, ident, slot.name, result)
        ticket = _admit(slot)  # 429 now, before the stream starts, when the queue is full
        from sse_starlette import EventSourceResponse

        class _Queued(EventSourceResponse):
            async def __call__(self, scope, receive, send) -> None:
                try:
                    await super().__call__(scope, receive, send)
                finally:  # a client gone before the stream began: its place is given up all the same
                    ticket.leave()

        events = _events(request, slot, kind, payload, options, ident, usage_in_stream, ticket)
        return _Queued(events, ping=15)

    async def _events(
        request,
        slot: _Slot,
        kind: str,
        payload,
        options: dict[str, Any],
        ident: str,
        usage_in_stream: bool,
        ticket,
    ) -> AsyncIterator[dict[str, str]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        holder: dict[str, Any] = {}

        def push(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                s = _generate(slot.engine, kind, payload, options, cancel)
                holder["stream"] = s
                if cancel.is_set():  # the client left while the prompt was being prepared
                    s.cancel()
                for piece in s:
                    push(("piece", piece))
                    if cancel.is_set():
                        s.close()
                        break
                push(("done", s.result))
            except BaseException as exc:  # noqa: BLE001 (handed to the event loop, which reports it)
                push(("error", exc))

        async with ticket:
            try:
                if kind == "chat":
                    yield {
                        "data": json.dumps(
                            _chunk(kind, ident, slot.name, {"role": "assistant", "content": ""})
                        )
                    }
                worker = loop.run_in_executor(None, work)
                while True:
                    what, value = await queue.get()
                    if what == "piece":
                        delta = {"content": value} if kind == "chat" else value
                        yield {"data": json.dumps(_chunk(kind, ident, slot.name, delta))}
                    elif what == "error":
                        error = _api_error(value)
                        yield {"data": json.dumps(error.body())}
                        break
                    else:
                        yield {
                            "data": json.dumps(
                                _chunk(kind, ident, slot.name, {} if kind == "chat" else "", _finish(value))
                            )
                        }
                        if usage_in_stream:
                            yield {
                                "data": json.dumps(
                                    {
                                        **_chunk(kind, ident, slot.name, None),
                                        "choices": [],
                                        "usage": _usage(value),
                                    }
                                )
                            }
                        yield {"data": "[DONE]"}
                        break
                await worker
            finally:  # the client went away (or the stream ended): stop generating, free the engine
                cancel.set()
                s = holder.get("stream")
                if s is not None:
                    s.cancel()

    class _Ticket:
        """A place in one engine's queue: entered when the engine is free, left when the answer is done."""

        def __init__(self, slot: _Slot) -> None:
            self.slot, self.start, self.left = slot, 0.0, False

        def leave(self) -> None:
            """Give up the place (once): a request that ends, or never got to start its stream."""
            if not self.left:
                self.left = True
                self.slot.waiting -= 1

        async def __aenter__(self):
            try:
                await self.slot.lock.acquire()
            except BaseException:
                self.leave()
                raise
            self.start = time.perf_counter()
            return self

        async def __aexit__(self, *exc) -> None:
            took = time.perf_counter() - self.start
            self.slot.seconds = 0.8 * self.slot.seconds + 0.2 * took
            self.leave()
            self.slot.lock.release()

    def _admit(slot: _Slot) -> _Ticket:
        if slot.waiting >= config.max_queue:
            retry = max(1, round(slot.seconds * slot.waiting))
            raise ApiError(
                429,
                f"'{slot.name}' has {slot.waiting} requests queued (the limit is {config.max_queue}); "
                f"retry in about {retry} s",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        slot.waiting += 1
        return _Ticket(slot)

    def _turn(slot: _Slot) -> _Ticket:
        return _admit(slot)

    return app


def _message(m: Any, i: int) -> dict[str, str]:
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
        raise ApiError(
            400,
            f"messages[{i}] must be an object with role system, user or assistant",
            param=f"messages[{i}]",
        )
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]: the text parts joined
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
            raise ApiError(
                400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}]"
            )
        content = "".join(parts)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
    role = "system" if m["role"] == "developer" else m["role"]
    return {"role": role, "content": content}


_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "seed": "seed",
}


def _options(body: dict[str, Any], engine) -> dict[str, Any]:
    """Generation options from an OpenAI body, over the model's own sampling defaults; checked here so
    that a bad value is a 400 before anything queues."""
    from edgekit.runtimes.base import GenerationOptions

    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: one answer per request", param="n")
    options: dict[str, Any] = dict(engine.generation_defaults())
    for theirs, ours in _SAMPLING.items():
        if body.get(theirs) is not None:
            value = body[theirs]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (ours in ("top_k", "seed") and not isinstance(value, int))
            ):
                raise ApiError(400, f"{theirs} must be a number, not {value!r}", param=theirs)
            options[ours] = value
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
    return options


def _generate(engine, kind: str, payload, options: dict[str, Any], cancel: threading.Event | None):
    """A GenerationResult (cancel None) or a Stream; chats drop their oldest turns to fit the context."""
    stream = cancel is not None
    if kind == "chat":
        return engine.chat(payload, stream=stream, truncate="oldest", **options)
    return engine.generate(payload, stream=stream, **options)


def _call(fn, *args):
    """fn(*args) in a worker thread, edgekit's errors turned into HTTP errors."""
    try:
        return fn(*args)
    except EdgekitError as exc:
        raise _api_error(exc) from None


def _api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidOptionError):
        return ApiError(400, str(exc))
    if isinstance(exc, EdgekitError):
        return ApiError(500, str(exc), kind="server_error")
    return ApiError(500, f"{type(exc).__name__}: {exc}", kind="server_error")


def _finish(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result) -> dict[str, int]:
    return {
        "prompt_tokens": result.tokens_in,
        "completion_tokens": result.tokens_out,
        "total_tokens": result.tokens_in + result.tokens_out,
    }


def _chunk(kind: str, ident: str, model: str, delta, finish: str | None = None) -> dict[str, Any]:
    base = {"id": ident, "created": int(time.time()), "model": model}
    if kind == "chat":
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return {**base, "object": "chat.completion.chunk", "choices": choices}
    choices = (
        [] if delta is None else [{"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}]
    )
    return {**base, "object": "text_completion", "choices": choices}


def _whole(kind: str, ident: str, model: str, result) -> dict[str, Any]:
    base = {"id": ident, "created": int(time.time()), "model": model, "usage": _usage(result)}
    if kind == "chat":
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": _finish(result),
                }
            ],
        }
    return {
        **base,
        "object": "text_completion",
        "choices": [{"index": 0, "text": result.text, "finish_reason": _finish(result), "logprobs": None}],
    }


def serve(
    models: Sequence[str | Path],
    config: ServerConfig | None = None,
    device: str = "auto",
    n_ctx: int | None = None,
    threads: int | None = None,
    ready=None,
) -> None:
    """Load the artifacts (NAME=PATH or PATH) and serve them until Ctrl-C or SIGTERM."""
    config = config or ServerConfig()
    config.check()
    uvicorn = require("uvicorn", "uvicorn", "serve", "edgekit serve")
    from .engine import load

    named = model_names(models)
    engines: dict[str, Any] = {}
    try:
        for name, path in named.items():
            engines[name] = load(path, device=device, n_ctx=n_ctx, threads=threads)
        app = create_app(engines, config)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_level="warning",
                access_log=False,
                server_header=False,
            )
        )
        if ready is not None:
            ready(engines)
        server.run()
    finally:
        for engine in engines.values():
            engine.close()

"""`edgekit serve`: an OpenAI-compatible HTTP server over local artifacts (FastAPI + uvicorn).

/v1/chat/completions and /v1/completions (JSON or SSE streaming), /v1/embeddings, /v1/models,
/health. Each artifact is served under a name; requests to one engine wait their turn in arrival
order (answers never interleave), and past `max_queue` waiting requests the server answers 429 with
Retry-After. Safe by default: it binds 127.0.0.1; any other address needs an API key; without a key
the Host header must name this machine's loopback (DNS rebinding); bodies are bounded; a bad request
is a 400 in OpenAI's error shape, naming what is wrong; a client that disconnects mid-stream cancels
its generation and frees the engine for the next request.

Here: the configuration, serve() and the routes. wire.py translates OpenAI's requests and answers;
admission.py decides who gets in and when each request gets its engine.
"""

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import InvalidOptionError, require
from edgekit.server import admission, wire
from edgekit.server.wire import ApiError

SHUTDOWN_S = 3  # after SIGTERM, connections still open are closed after this many seconds


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
        if not admission.is_loopback(self.host) and not self.api_key:
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
        if not self.port <= 65535:
            raise InvalidOptionError(f"port must be between 0 and 65535, not {self.port}")


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


def create_app(engines: dict[str, Any], config: ServerConfig | None = None,
               log: Callable[[str], None] | None = None):
    """The FastAPI app serving these engines (name -> Engine). The caller owns the engines; log gets
    one access line per request."""
    require("fastapi", "fastapi", "serve", "edgekit serve")
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    config = config or ServerConfig()
    queues = admission.Queues(engines, config)
    app = FastAPI(title="edgekit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queues = queues  # serve() closes them on SIGTERM
    app.add_middleware(admission.Guard, config=config, log=log)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):  # a bug of ours: still OpenAI's shape, never text
        return JSONResponse(wire.api_error(exc).body(), 500)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException):  # an unknown path or method
        what = "no such route" if exc.status_code == 404 else "method not allowed" if (
            exc.status_code == 405) else str(exc.detail)
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {what}",
                         code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code))
        return JSONResponse(error.body(), exc.status_code, headers=getattr(exc, "headers", None))

    async def body_of(request: Request, kind: str) -> dict[str, Any]:
        body = wire.parse_body(await admission.read_body(request.stream(), config.max_body_bytes))
        admission.note(request.scope, model=body.get("model"), user=body.get("user"))  # the access log's
        wire.check_fields(body, kind)
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(engines)}

    @app.get("/metrics")
    async def metrics():
        from fastapi.responses import PlainTextResponse

        queues.slot_table()
        return PlainTextResponse(admission.prometheus(queues.slots), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return wire.models_list(list(engines), created)

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name not in engines:
            raise ApiError(404, f"no model named {name!r}; this server has {', '.join(engines)}",
                           param="model", code="model_not_found")
        return wire.model_object(name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await body_of(request, "chat")
        slot = queues.slot(body.get("model"), "text-generation")
        return await _answer(request, queues, slot, body, "chat", wire.chat_messages(body))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request, "completion")
        slot = queues.slot(body.get("model"), "text-generation")
        return await _answer(request, queues, slot, body, "completion", wire.completion_prompt(body))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await body_of(request, "embedding")
        slot = queues.slot(body.get("model"), "feature-extraction")
        texts, fmt = wire.embedding_input(body)
        async with queues.admit(slot):
            await _gone_already(request)
            vectors = await asyncio.to_thread(wire.call, slot.engine.embed, texts)
            wire.check_dimensions(body, len(vectors[0]))
            tokens = sum(slot.engine.count_tokens(t) for t in texts)
        return wire.embeddings(vectors, fmt, slot.name, tokens)

    return app


async def _answer(
    request: Any, queues: admission.Queues, slot: admission.Slot, body: dict[str, Any], kind: str,
    payload: Any,
) -> Any:
    """A chat or completion request's answer: whole, or (stream true) a response streaming its events."""
    options = wire.generation_options(body, slot.engine.generation_defaults(), kind)
    stream, usage_in_stream = wire.streaming(body)
    ident = wire.completion_id(kind)
    if not stream:
        async with queues.admit(slot):
            await _gone_already(request)
            # run as a stream of this request's own, so that a client that hangs up cancels its answer
            # alone (others may be decoding beside it)
            holder: dict[str, Any] = {}
            watcher = asyncio.create_task(_cancel_when_gone(request, slot.engine, holder))
            try:
                result = await asyncio.to_thread(wire.call, _whole, slot.engine, kind, payload, options,
                                                 holder)
            finally:
                watcher.cancel()
            slot.record(result)
        return wire.whole(kind, ident, slot.name, result)
    ticket = queues.admit(slot)  # 429 now, before the stream starts, when the queue is full
    events = _events(slot, kind, payload, options, ident, usage_in_stream, ticket)
    return admission.event_stream(events, ticket)


async def _events(
    slot: admission.Slot,
    kind: str,
    payload: Any,
    options: dict[str, Any],
    ident: str,
    usage_in_stream: bool,
    ticket: admission.Ticket,
) -> AsyncIterator[dict[str, str]]:
    """The SSE events of one streamed answer, generated once the engine is this request's."""
    async with ticket:
        for data in wire.stream_opening(kind, ident, slot.name):
            yield {"data": data}
        generation = admission.run_stream(lambda: wire.generate(slot.engine, kind, payload, options, True))
        async with aclosing(generation) as events:  # closed at once when the client goes away
            async for what, value in events:
                if what == "done":
                    slot.record(value)
                for data in wire.stream_event(kind, ident, slot.name, what, value, usage_in_stream):
                    yield {"data": data}


async def _gone_already(request: Any) -> None:
    """A client that hung up while its request waited in the queue gets nothing run for it."""
    if await request.is_disconnected():
        raise ApiError(499, "the client closed the connection", code="client_closed_request")


def _whole(engine: Any, kind: str, payload: Any, options: dict[str, Any], holder: dict[str, Any]) -> Any:
    """A whole answer, read from a stream that holder["stream"] names while it runs."""
    stream = holder["stream"] = wire.generate(engine, kind, payload, options, True)
    if holder.get("gone"):  # the client left while the prompt was being prepared
        stream.cancel()
    for _ in stream:
        pass
    if stream.result is None:  # cancelled before it began: its client is gone
        raise ApiError(499, "the client closed the connection", code="client_closed_request")
    return stream.result


async def _cancel_when_gone(request: Any, engine: Any, holder: dict[str, Any]) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    holder["gone"] = True
    stream = holder.get("stream")
    if stream is not None:
        stream.cancel()
    elif engine.backend.parallel == 1:  # still rendering its prompt, and alone on the engine
        engine.cancel()


# the default: on CPU, 4 rows in one decode step give about twice one row's tokens per second
AUTO_PARALLEL, AUTO_MIN_WINDOW = 4, 1024


def _set_parallel(name: str, engine: Any, parallel: int | None) -> None:
    """Let `engine` decode `parallel` answers at once (None: the default where it can)."""
    if engine.manifest.get("task") == "feature-extraction" or parallel == 1:
        return
    if parallel is None:
        if engine.context_length // AUTO_PARALLEL < AUTO_MIN_WINDOW:
            return
        try:
            engine.backend.set_parallel(AUTO_PARALLEL)
        except InvalidOptionError:  # a backend or graph that cannot batch: one answer at a time
            pass
        return
    try:
        engine.backend.set_parallel(parallel)
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"model '{name}' ({engine.path}): {exc}") from None


def _log_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def listen(host: str, port: int):
    """The server's listening socket, bound before any model loads: a port in use or an address
    this machine does not have is an error at once, naming it."""
    import socket

    name = host.strip("[]")
    try:
        family = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidOptionError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((name, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidOptionError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(
    models: Sequence[str | Path],
    config: ServerConfig | None = None,
    device: str = "auto",
    n_ctx: int | None = None,
    threads: int | None = None,
    ready=None,
    parallel: int | None = None,
) -> None:
    """Load the artifacts (NAME=PATH or PATH) and serve them until Ctrl-C or SIGTERM.

    parallel: answers each text-generation model decodes at once, its context window split between
    them (more wait in its queue). None: AUTO_PARALLEL where the backend batches and each stream keeps
    at least AUTO_MIN_WINDOW tokens, else one."""
    config = config or ServerConfig()
    config.check()
    if parallel is not None and (type(parallel) is not int or parallel < 1):
        raise InvalidOptionError(f"parallel must be a whole number >= 1, not {parallel!r}")
    uvicorn = require("uvicorn", "uvicorn", "serve", "edgekit serve")
    from edgekit.engine import load

    named = model_names(models)
    sock = listen(config.host, config.port)
    engines: dict[str, Any] = {}

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            """SIGTERM or Ctrl-C: nothing new starts, what runs is cancelled, the answers end now."""
            super().handle_exit(sig, frame)
            app.state.queues.close()
            for engine in engines.values():
                engine.cancel()

    try:
        for name, path in named.items():
            engines[name] = load(path, device=device, n_ctx=n_ctx, threads=threads)
            _set_parallel(name, engines[name], parallel)
        app = create_app(engines, config, log=_log_line)
        server = Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=SHUTDOWN_S,
            )
        )
        if ready is not None:
            ready(engines)
        server.run(sockets=[sock])
    finally:
        sock.close()
        for engine in engines.values():
            engine.close()

"""Who is let in, and when each request gets its engine: the Host, API key and body-size checks, one
queue per served engine (in arrival order, 429 with Retry-After past `max_queue` waiting), and a
streamed generation that is cancelled, freeing the engine, when its client goes away."""

import asyncio
import hmac
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgekit.server.wire import ApiError, check_model

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Limits(Protocol):
    """What admission reads from the server's configuration (app.ServerConfig), when each request comes."""

    api_key: str | None
    max_queue: int
    max_body_bytes: int
    allowed_hosts: Sequence[str]


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


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the body is larger than {limit} bytes", code="body_too_large")


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")


def origin_host(origin: str) -> str:
    """The host name in an Origin header ("http://localhost:5173" -> "localhost"); "" for "null"."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(origin.strip()).hostname or ""
    except ValueError:
        return ""
    return f"[{host}]" if ":" in host else host


def note(scope: Mapping[str, Any], **facts: Any) -> None:
    """Facts about a request for its access-log line (the model it named, its user)."""
    scope.setdefault("state", {}).update({k: v for k, v in facts.items() if isinstance(v, str)})


class Guard:
    """Plain ASGI middleware (no per-chunk cost on streams): the Host header, the API key and the
    declared body size, checked before the app sees the request; then one access-log line per
    request on stderr when it ends (a stream: when its last event is sent)."""

    def __init__(self, app: Any, config: Limits, log: Callable[[str], None] | None = None) -> None:
        self.app, self.config, self.log = app, config, log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            error = self.check(scope)
            if error is not None:
                from starlette.responses import JSONResponse

                await JSONResponse(error.body(), error.status, headers=error.headers)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            if self.log is not None:
                self.log(access_line(scope, status[0] or 499, time.perf_counter() - start))

    def check(self, scope: Mapping[str, Any]) -> ApiError | None:
        config = self.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # without a key, only names of this machine: a web page's DNS rebinding cannot reach the models
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
        # a web page the user opens may POST here without asking ("simple" requests: text/plain, forms,
        # no preflight): only pages of this machine, and only JSON bodies, which browsers preflight
        origin = headers.get("origin")
        if origin is not None and not _allowed(origin_host(origin), config):
            return ApiError(
                403,
                f"requests from the web page at {origin} are refused: only pages served from this "
                "machine may call this server",
                code="origin_not_allowed",
            )
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return ApiError(
                    415,
                    f"Content-Type must be application/json, not {kind or 'none'} "
                    "(curl: -H 'Content-Type: application/json')",
                    code="unsupported_media_type",
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return too_large(config.max_body_bytes)
        return None


def access_line(scope: Mapping[str, Any], status: int, seconds: float) -> str:
    """`127.0.0.1 "POST /v1/chat/completions" 200 1.23 s model=smol user=alice`."""
    client = (scope.get("client") or ("-",))[0]
    state = scope.get("state") or {}
    extra = "".join(f" {k}={_printable(state[k])}" for k in ("model", "user") if state.get(k))
    return f'{client} "{scope.get("method")} {_printable(scope.get("path"))}" {status} {seconds:.2f} s{extra}'


def _printable(value: Any, limit: int = 80) -> str:
    """A client's text as one harmless word of a log line: no newline can forge another line."""
    text = "".join(c if c.isprintable() and not c.isspace() else "_" for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed(host: str, config: Limits) -> bool:
    return bool(host) and (is_loopback(host) or host in config.allowed_hosts)


async def read_body(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """A request's body, counted as it arrives (chunked bodies declare no length): 413 past `limit`."""
    raw = bytearray()
    async for piece in chunks:
        raw += piece
        if len(raw) > limit:
            raise too_large(limit)
    return bytes(raw)


@dataclass
class Slot:
    """One served engine: its name, the places requests queue for (one per stream the engine decodes
    at once), and how many wait."""

    name: str
    engine: Any
    lock: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)
    waiting: int = 0
    seconds: float = 1.0  # a running average of request time, for Retry-After
    closed: bool = False  # the server is stopping
    running: int = 0  # requests in the engine now
    served: int = 0  # answers finished (recorded)
    refused: int = 0  # 429s
    tokens: int = 0  # tokens generated by the finished answers
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))  # (TTFT s, decode tok/s)

    @property
    def task(self) -> str:
        return str(self.engine.manifest.get("task", "text-generation"))

    def record(self, result: Any) -> None:
        """A finished generation's numbers, for /metrics."""
        m = getattr(result, "metrics", None)
        if m is None:
            return
        self.served += 1
        self.tokens += int(m.tokens_out)
        if m.tokens_out > 1:  # a decode speed needs two tokens
            self.recent.append((float(m.ttft_s), float(m.decode_tok_s)))


RECENT = 256  # answers the TTFT and speed quantiles of /metrics are taken over


def prometheus(slots: Mapping[str, Slot]) -> str:
    """The server's state in Prometheus' text format: per model, its streams, what runs and waits,
    counts, and TTFT and decode speed quantiles over its last RECENT answers."""
    import numpy as np

    lines: list[str] = []

    def metric(name: str, kind: str, what: str, rows: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP edgekit_{name} {what}", f"# TYPE edgekit_{name} {kind}"])
        lines.extend(f"edgekit_{name}{{{labels}}} {value if isinstance(value, int) else repr(float(value))}"
                     for labels, value in rows)

    def label(name: str) -> str:  # the exposition format's escapes
        return name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    models = [(f'model="{label(n)}"', s) for n, s in slots.items()]
    for name, kind, what, value in (
        ("streams", "gauge", "answers a model decodes at once", lambda s: _streams(s.engine)),
        ("requests_running", "gauge", "requests in the model now", lambda s: s.running),
        ("requests_waiting", "gauge", "requests queued for a stream",
         lambda s: max(0, s.waiting - s.running)),
        ("requests_total", "counter", "answers finished", lambda s: s.served),
        ("requests_refused_total", "counter", "requests answered 429", lambda s: s.refused),
        ("tokens_generated_total", "counter", "tokens of the finished answers", lambda s: s.tokens),
    ):
        metric(name, kind, what, [(m, value(s)) for m, s in models])
    for name, col, what in (("ttft_seconds", 0, "time to the first token"),
                            ("decode_tokens_per_second", 1, "decode speed of one answer")):
        rows = [(f'{m},quantile="{q}"', float(np.quantile([r[col] for r in s.recent], q)))
                for m, s in models if s.recent for q in (0.5, 0.95)]
        metric(name, "summary", f"{what}, over the last {RECENT} answers", rows)
    return "\n".join(lines) + "\n"


class Ticket:
    """A place in one engine's queue: entered when the engine is free, left when the answer is done."""

    def __init__(self, slot: Slot) -> None:
        self.slot, self.start, self.left = slot, 0.0, False

    def leave(self) -> None:
        """Give up the place (once): a request that ends, or never got to start its stream."""
        if not self.left:
            self.left = True
            self.slot.waiting -= 1

    async def __aenter__(self) -> "Ticket":
        try:
            await self.slot.lock.acquire()
        except BaseException:
            self.leave()
            raise
        if self.slot.closed:  # the server is stopping: what waited does not start
            self.leave()
            self.slot.lock.release()
            raise shutting_down()
        self.start = time.perf_counter()
        self.slot.running += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        took = time.perf_counter() - self.start
        self.slot.seconds = 0.8 * self.slot.seconds + 0.2 * took
        self.slot.running -= 1
        self.leave()
        self.slot.lock.release()


class Queues:
    """The served engines (name -> Engine), each behind its own queue."""

    def __init__(self, engines: Mapping[str, Any], config: Limits) -> None:
        self.engines, self.config = engines, config
        self.slots: dict[str, Slot] = {}
        self.closed = False

    def slot_table(self) -> dict[str, Slot]:
        """name -> Slot, made on first use, inside the server's event loop (asyncio's semaphores bind
        to it)."""
        if not self.slots:
            from concurrent.futures import ThreadPoolExecutor

            for n, e in self.engines.items():
                self.slots[n] = Slot(n, e, asyncio.Semaphore(_streams(e)), closed=self.closed)
            # each running answer holds a worker thread: room for all of them (the default pool has
            # cpu count + 4) and a few more for what waits on the model
            workers = sum(_streams(e) for e in self.engines.values()) + 4
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, "edgekit-serve"))
        return self.slots

    def slot(self, name: Any, task: str) -> Slot:
        """The engine a request names, which must do `task` (404 or 400 otherwise); a request that
        names none gets the only model doing `task`, when there is one."""
        self.slot_table()
        if name is None:
            able = [n for n, s in self.slots.items() if s.task == task]
            if len(able) != 1:
                raise ApiError(400, f"model is required: this server has {', '.join(self.slots)}",
                               param="model", code="missing_model")
            name = able[0]
        name = check_model(name, {n: s.task for n, s in self.slots.items()}, task)
        return self.slots[name]

    def close(self) -> None:
        """The server is stopping: requests still waiting are answered 503, new ones too."""
        self.closed = True
        for slot in self.slots.values():
            slot.closed = True

    def admit(self, slot: Slot) -> Ticket:
        """A place in `slot`'s queue, to enter with `async with`; 429 when `max_queue` already wait
        (the answers running count too, less one for each stream the engine decodes at once past the
        first: max_queue 1 on a one-stream engine still means one request at a time)."""
        if slot.closed:
            raise shutting_down()
        max_queue, streams = self.config.max_queue, _streams(slot.engine)
        if slot.waiting >= max_queue + streams - 1:
            retry = max(1, round(slot.seconds * slot.waiting / streams))
            slot.refused += 1
            raise ApiError(
                429,
                f"'{slot.name}' has {slot.waiting} requests queued (the limit is {max_queue}); "
                f"retry in about {retry} s",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        slot.waiting += 1
        return Ticket(slot)


def _streams(engine: Any) -> int:
    """How many answers an engine decodes at once."""
    return int(getattr(engine.backend, "parallel", 1))


def event_stream(events: AsyncIterator[dict[str, str]], ticket: Ticket) -> Any:
    """An SSE response over `events` (pinging every 15 s) that gives up `ticket`'s place however it
    ends: a client gone before the stream began never enters the ticket at all."""
    from sse_starlette import EventSourceResponse

    class Queued(EventSourceResponse):
        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                ticket.leave()

    return Queued(events, ping=15)


async def run_stream(start: Callable[[], Any]) -> AsyncIterator[tuple[str, Any]]:
    """Run the Stream that start() opens in a worker thread: ("piece", text) for each piece, then
    ("done", result) or ("error", exception). Closing this early (the client went away) cancels the
    generation, so the engine is free for the next request: close it with contextlib.aclosing."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    holder: dict[str, Any] = {}

    def push(item: tuple[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            s = start()
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

    try:
        worker = loop.run_in_executor(None, work)
        while True:
            what, value = await queue.get()
            yield what, value
            if what != "piece":
                break
        await worker
    finally:  # the client went away (or the stream ended): stop generating, free the engine
        cancel.set()
        s = holder.get("stream")
        if s is not None:
            s.cancel()

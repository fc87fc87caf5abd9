"""What the HTTP adapters (SMS, push, webhook, batch email) share: one kept-alive client, status-code rules.

The client is our own lean HTTP/1.1 client: asyncio protocols on pooled,
kept-alive connections, answers parsed by httptools (llhttp, as in uvicorn),
behind the small interface the adapters use (``post``, ``aclose``, a response
with ``status_code``, ``headers``, ``json()``, ``text``). Push and SMS send one
request per message, so on a two-core machine the client's CPU per request is
a large share of delivery. FCM-shaped POSTs to the local peer in its own
process, 8 connections, 64 in flight (``.venv/bin/python bench/http_client.py``,
20,000 requests after a warm-up, default asyncio loop):

    aiohttp (this module until now)   75 µs of client CPU per request   12,000 requests/s
    this client                       14 µs                             55,000 requests/s

(httpx was 945 µs.) aiohttp builds, per request, URL, request and response
objects, a stream reader, a cookie lookup and a timeout context; here a request
on a free connection is one bytes write and one future. Nor is there a timer
per request: each connection keeps one, which when it fires re-arms itself for
the request then in flight (``asyncio.timeout`` alone cost 4.5 µs a request).

Retries: a POST to a provider is not idempotent, so a request is never sent
twice, with the one exception aiohttp and urllib3 make too: when a kept-alive
connection that had already served an answer is found closed (the server
dropped it while idle) before any byte of the new answer arrived, the server did
not act on the request, and it goes once more, on a new connection.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httptools
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from config import Settings
from pipeline.channels.base import SendResult, retry_after

# Statuses worth retrying: timeouts, throttling, and the provider's own trouble.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpError(Exception):
    """The server broke the exchange: closed the connection mid-answer, or answered what is not HTTP."""


class _StaleConnection(HttpError):
    """A reused connection was found closed before any byte of the answer: safe to send again."""


# What a request that got no answer raises (connect errors, SSL errors and timeouts are OSErrors too).
HTTP_ERRORS = (HttpError, asyncio.TimeoutError, OSError)

# An idle connection older than this is not trusted any more (servers and NATs drop them).
KEEPALIVE_S = 60.0
# Framing is ours to write: a caller's header of these names would corrupt the request.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})
# Distinct URLs remembered with their parsed request line (webhooks post to many).
_ROUTES_KEPT = 1024
_URL_SAFE = "/?%:@!$&'()*+,;=~[]"

_Origin = tuple[str, str, int]  # scheme, host, port: what a connection can serve


class HttpResponse:
    """A provider's answer, read in full."""

    __slots__ = ("status_code", "reason_phrase", "headers", "content")

    def __init__(self, status_code: int, reason_phrase: str, headers: CIMultiDictProxy[str], content: bytes) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers  # case-insensitive, like every HTTP header lookup should be
        self.content = content

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not JSON."""
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None


def _header_line(name: str, value: str) -> str:
    line = f"{name}: {value}\r\n"
    if line.count("\n") != 1 or line.count("\r") != 1:  # a newline in a value would smuggle a header in
        raise ValueError(f"newline in HTTP header {name!r}")
    return line


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time; httptools calls the ``on_*`` methods as it parses."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.lost = self.loop.create_future()
        self.reused = False  # has served an answer: if found closed now, the server dropped it while idle
        self.received = False  # a byte of the current answer arrived
        self.headers_done = False
        self.keep_alive = False
        self.idle_since = 0.0
        self.reason = b""
        self.header_list: list[tuple[str, str]] = []
        self.body: list[bytes] = []

    def send(self, request: bytes, deadline: float) -> asyncio.Future[HttpResponse]:
        """Write ``request``; the future gets the answer, or the reason there is none."""
        self.waiter = waiter = self.loop.create_future()
        self.received = self.headers_done = False
        if not self.is_open:
            self._closed(None)
            return waiter
        # One timer per connection, not per request: when it fires it only re-arms itself for
        # the request then in flight, if that one still has time (see _check_deadline).
        self.deadline = deadline
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._check_deadline)
        self.transport.write(request)  # type: ignore[union-attr]  # is_open
        return waiter

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def _check_deadline(self) -> None:
        self.timer = None
        if self.waiter is None:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)
            return
        self._fail(TimeoutError(f"no answer within {self.pool.timeout} s"))
        self.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes and all (after a timeout or a broken answer)."""
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: whatever this is, the connection's state is unknown
            self.abort()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(HttpError(f"invalid HTTP response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.keep_alive = False
        self.pool.open.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.lost.set_result(None)
        self._closed(exc)

    def _closed(self, exc: Exception | None) -> None:
        """The connection is gone: an answer delimited by the close is complete, any other is lost."""
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done:
            headers = CIMultiDict(self.header_list)
            if "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower():
                self._answer(headers)  # the body ran until the close (HTTP/1.0 style)
                return
            error: HttpError = HttpError("connection closed in the middle of the answer")
        elif self.reused and not self.received:
            error = _StaleConnection("kept-alive connection was closed by the server")
        else:
            error = HttpError("connection closed before the answer")
        error.__cause__ = exc
        self._fail(error)

    # -- httptools -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second answer to one request
            self.abort()
        self.reason = b""
        self.header_list = []
        self.body = []

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()  # Connection: close, HTTP/1.0, body until close

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # an interim answer (100 Continue): the real one follows
            self.headers_done = False
            return
        self._answer(CIMultiDict(self.header_list))

    def _answer(self, headers: CIMultiDict[str]) -> None:
        waiter, self.waiter = self.waiter, None
        self.reused = True
        if waiter is not None and not waiter.done():
            reason = self.reason.decode("latin-1")
            waiter.set_result(HttpResponse(self.parser.get_status_code(), reason, CIMultiDictProxy(headers),
                                           b"".join(self.body)))

    def _fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class _Pool:
    """Up to ``size`` connections to one origin: a request takes an idle one, or opens one, or waits in line.

    Whoever is done with a connection hands it to the first in line; a connection
    that closes hands its place to the first in line, who opens a new one. Those in
    line need no timer: every request holding a connection started earlier with the
    same timeout, so one lets go (answered or timed out) before a waiter's deadline,
    and the waiter's connect or answer then runs against what is left of it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 size: int, timeout: float) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.size = size
        self.timeout = timeout
        self.count = 0  # connections open or being opened, in use or idle
        self.idle: list[_Connection] = []  # last in, first out: the warmest connection goes next
        self.open: set[_Connection] = set()
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()  # oldest first

    async def request(self, request: bytes, deadline: float) -> HttpResponse:
        connection = self._take_idle() or await self._acquire(deadline)
        try:
            try:
                response = await connection.send(request, deadline)
            except _StaleConnection:
                connection = await self._open(deadline)
                response = await connection.send(request, deadline)
        except BaseException:  # timed out, cancelled or broken: its state is unknown, never reuse it
            connection.abort()
            self._release(None)
            raise
        if connection.keep_alive:
            self._release(connection)
        else:
            connection.close()
            self._release(None)
        return response

    def _take_idle(self) -> _Connection | None:
        now = self.loop.time()
        while self.idle:
            connection = self.idle.pop()
            if now - connection.idle_since < KEEPALIVE_S and connection.is_open:
                return connection
            connection.close()
            self.count -= 1
        return None

    async def _acquire(self, deadline: float) -> _Connection:
        """A connection when none is idle: a new one if there is room, else the next one released."""
        if self.count < self.size:
            self.count += 1
        else:
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                connection = await waiter
            except BaseException:  # cancelled after being served: pass on what was handed over
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._release(waiter.result())
                raise
            if connection is not None:
                return connection
        try:
            return await self._open(deadline)
        except BaseException:
            self._release(None)
            raise

    def _release(self, connection: _Connection | None) -> None:
        """Hand a reusable ``connection`` on (or keep it idle); ``None``: one connection fewer, room for another."""
        if connection is None:
            self.count -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():  # not cancelled
                if connection is None:
                    self.count += 1  # the room goes to the waiter, who opens a connection
                waiter.set_result(connection)
                return
        if connection is not None:
            connection.idle_since = self.loop.time()
            self.idle.append(connection)

    async def _open(self, deadline: float) -> _Connection:
        async with asyncio.timeout_at(deadline):
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None)
        self.open.add(connection)
        return connection

    def close_expired(self) -> None:
        now = self.loop.time()
        for connection in [c for c in self.idle if now - c.idle_since >= KEEPALIVE_S]:
            self.idle.remove(connection)
            connection.close()
            self.count -= 1

    def close(self) -> list[asyncio.Future[None]]:
        """Close every connection and turn away those in line; the futures say when the connections are gone."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(HttpError("the client was closed"))
        self.waiters.clear()
        self.idle.clear()
        for connection in self.open:
            connection.close()
        return [connection.lost for connection in self.open]


class HttpClient:
    """Up to ``connections`` kept-alive connections per provider origin, opened on first use."""

    def __init__(self, settings: Settings, connections: int, headers: Mapping[str, str] | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.timeout = settings.provider_timeout_s  # connect, send and answer together
        self.connections = connections
        self.headers = {"User-Agent": "herald", **(headers or {})}
        if auth:  # HTTP Basic (Twilio: account SID and auth token)
            self.headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        # Header lines by lower-cased name, so a request's own headers replace them whatever their case.
        self._lines = {name.lower(): _header_line(name, value) for name, value in self.headers.items()}
        self._block = "".join(self._lines.values())
        self._routes: dict[str, tuple[_Origin, str]] = {}  # url -> its origin, its request line and Host
        self._pools: dict[_Origin, _Pool] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(self, url: str, *, content: bytes | str | None = None, data: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> HttpResponse:
        """POST raw ``content`` or a form (``data``); raises one of ``HTTP_ERRORS`` without an answer."""
        if isinstance(content, str):
            body, default_type = content.encode(), "text/plain; charset=utf-8"
        elif content is not None:
            body, default_type = content, "application/octet-stream"
        elif data is not None:
            body, default_type = urlencode(data).encode(), "application/x-www-form-urlencoded"
        else:
            body, default_type = b"", None
        if headers:
            lines = self._lines.copy()
            for name, value in headers.items():
                key = name.lower()
                if key not in _FRAMING:
                    lines[key] = _header_line(name, value)
            block = "".join(lines.values())
        else:
            lines, block = self._lines, self._block
        if default_type is not None and "content-type" not in lines:
            block += f"Content-Type: {default_type}\r\n"
        origin, request_line = self._routes.get(url) or self._route(url)
        request = f"{request_line}{block}Content-Length: {len(body)}\r\n\r\n".encode() + body
        pool = self._pools.get(origin) or self._pool(origin)
        return await pool.request(request, pool.loop.time() + self.timeout)

    def _route(self, url: str) -> tuple[_Origin, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        authority = host if port == default_port else f"{host}:{port}"
        # Spaces and non-ASCII are percent-encoded, as yarl did for aiohttp; what is encoded already stays so.
        target = quote(parts.path or "/", _URL_SAFE) + (f"?{quote(parts.query, _URL_SAFE)}" if parts.query else "")
        if len(self._routes) >= _ROUTES_KEPT:
            self._routes.clear()
        route = self._routes[url] = ((parts.scheme, parts.hostname, port),
                                     f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n")
        return route

    def _pool(self, origin: _Origin) -> _Pool:
        """A new origin's pool; meanwhile idle connections past their keep-alive, and unused pools, go."""
        for pool in self._pools.values():
            pool.close_expired()
        self._pools = {key: pool for key, pool in self._pools.items() if pool.count}
        scheme, host, port = origin
        ssl_context = None
        if scheme == "https":
            self._ssl = ssl_context = self._ssl or ssl.create_default_context()
        pool = self._pools[origin] = _Pool(asyncio.get_running_loop(), host, port, ssl_context, self.connections,
                                           self.timeout)
        return pool

    async def aclose(self) -> None:
        """Close every connection; the client opens new ones if used again."""
        pools, self._pools = self._pools, {}
        lost = [future for pool in pools.values() for future in pool.close()]
        if lost:
            await asyncio.wait(lost, timeout=self.timeout)


def http_client(settings: Settings, connections: int = 8, *, headers: Mapping[str, str] | None = None,
                auth: tuple[str, str] | None = None) -> HttpClient:
    """A client that keeps up to ``connections`` connections open to the provider, timeouts from settings."""
    return HttpClient(settings, connections, headers=headers, auth=auth)


def transport_failure(exc: BaseException, url: str) -> SendResult:
    """A request that got no answer: always worth another try."""
    kind = "timed out" if isinstance(exc, asyncio.TimeoutError) else "failed"
    return SendResult.transient(f"request to {url} {kind}: {type(exc).__name__}: {exc}".strip())


def status_failure(
    response: HttpResponse, reason: str, code: str | None = None, recipient_problem: bool = False
) -> SendResult:
    """A non-2xx answer: transient if retryable, else permanent."""
    if response.status_code in RETRYABLE:
        return SendResult.transient(reason, code=code, retry_after_s=retry_after(response.headers.get("retry-after")))
    return SendResult.permanent(reason, code=code, recipient_problem=recipient_problem)

"""A small HTTP/1.1 server for provider peers: keep-alive, Content-Length bodies, failure injection.

It runs in its own thread with its own event loop (``LoopThread``), so a test
can drive the API synchronously (starlette's TestClient) or from the pytest
event loop while the peer answers. Every request is recorded (unless
``record=False``, for benchmarks) and can be waited for.

Failure injection, for the retry and dead-letter tests of the pipeline:

    peer.fail_next(3, status=500)                 the next 3 requests get a 500
    peer.fail_next(1, status=429, headers={"Retry-After": "1"})
    peer.delay_s = 0.2                             every answer waits 200 ms
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from tests.peers.loop import ServedPeer

_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 411: "Length Required", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-able, or bytes as-is
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        body = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body) if self.body is not None else b""
        headers = {"Content-Type": "application/json", **self.headers, "Content-Length": str(len(body)),
                   "Connection": "keep-alive" if keep_alive else "close"}
        head = f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Status')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return head.encode("latin-1") + b"\r\n" + body


class _Connection(asyncio.Protocol):
    def __init__(self, peer: HttpPeer) -> None:
        self.peer = peer
        self.buffer = bytearray()
        self.waiting = False  # a delayed answer is pending: keep the next request in the buffer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve()

    def _serve(self) -> None:
        while not self.waiting and self.transport is not None and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if "chunked" in headers.get("transfer-encoding", ""):
                self.transport.write(Response(411, {"error": "send Content-Length"}).encode(False))
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            url = urlsplit(target)
            request = Request(method, url.path, url.query, headers, body)
            answer = self.peer._answer(request)
            keep_alive = headers.get("connection", "").lower() != "close"
            if self.peer.delay_s > 0:
                self.waiting = True
                asyncio.get_running_loop().call_later(self.peer.delay_s, self._write, answer, keep_alive)
                return
            self._write(answer, keep_alive)

    def _write(self, answer: Response, keep_alive: bool) -> None:
        self.waiting = False
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(answer.encode(keep_alive))
        if not keep_alive:
            self.transport.close()
        elif self.buffer:
            self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class HttpPeer(ServedPeer):
    """Base of the HTTP peers: subclasses implement ``handle(request) -> Response``."""

    path = "/"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, record: bool = True) -> None:
        self.host = host
        self.port = port
        self.record = record
        self.delay_s = 0.0
        self.requests: list[Request] = []
        self.count = 0
        self._failures: list[Response] = []
        self._changed = threading.Condition()

    async def _listen(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    # -- behaviour --------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 500, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and ``body``), then behave again."""
        answer = Response(status, body if body is not None else {"error": f"injected {status}"}, headers or {})
        with self._changed:
            self._failures.extend([answer] * n)

    def reset(self) -> None:
        with self._changed:
            self.requests.clear()
            self._failures.clear()
            self.count = 0
            self.delay_s = 0.0

    def handle(self, request: Request) -> Response:  # pragma: no cover - subclasses answer
        return Response(200, {"ok": True})

    def _answer(self, request: Request) -> Response:
        with self._changed:
            failure = self._failures.pop(0) if self._failures else None
            self.count += 1
            if self.record:
                self.requests.append(request)
            self._changed.notify_all()
        return failure or self.handle(request)

    def wait_for(self, count: int, timeout: float = 10.0, predicate: Callable[[], bool] | None = None) -> list[Request]:
        """Block until ``count`` requests arrived (and ``predicate`` holds); return the recorded ones."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: self.count >= count and (predicate is None or predicate()), timeout=timeout
            )
            if not done:
                raise TimeoutError(f"{type(self).__name__} got {self.count} requests, expected {count}")
            return list(self.requests)

"""The adapters' HTTP client against a scripted HTTP/1.1 server in the test's own loop: framing of
answers, keep-alive and the pool, timeouts, the one retry on a stale connection, what it sends."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

import httptools
import pytest

from config import Settings
from pipeline.channels.http import HTTP_ERRORS, HttpClient, HttpError


@dataclass
class Received:
    connection: int  # 1 for the first connection the server accepted, 2 for the second...
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


Handler = Callable[[Received, asyncio.Transport], None]


def answer(status: int = 200, body: bytes = b'{"ok": true}', headers: tuple[str, ...] = (),
           version: str = "1.1") -> bytes:
    head = [f"HTTP/{version} {status} Whatever", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def ok(request: Received, transport: asyncio.Transport) -> None:
    transport.write(answer())


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.accepted += 1
        self.number = self.server.accepted
        self.server.live.add(self)
        self.server.most_live = max(self.server.most_live, len(self.server.live))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.live.discard(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.target, self.headers, self.body = "", [], b""

    def on_url(self, url: bytes) -> None:
        self.target += url.decode()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        request = Received(self.number, self.target, self.headers, self.body)
        self.server.received.append(request)
        assert self.transport is not None
        self.server.handler(request, self.transport)


class Server:
    """Counts connections (accepted, live, most live at once) and answers each request with ``handler``."""

    def __init__(self) -> None:
        self.handler: Handler = ok
        self.received: list[Received] = []
        self.accepted = 0
        self.live: set[_ServerConnection] = set()
        self.most_live = 0

    async def start(self) -> Server:
        self._server = await asyncio.get_running_loop().create_server(lambda: _ServerConnection(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/send?x=1"
        return self

    def drop_connections(self) -> None:
        for connection in list(self.live):
            assert connection.transport is not None
            connection.transport.close()

    def close(self) -> None:
        self._server.close()
        self.drop_connections()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = await Server().start()
    yield server
    server.close()


@pytest.fixture
async def make_client(settings: Settings) -> AsyncIterator[Callable[..., HttpClient]]:
    made: list[HttpClient] = []

    def make(connections: int = 2, timeout: float = 5.0, **kwargs) -> HttpClient:
        made.append(HttpClient(settings.model_copy(update={"provider_timeout_s": timeout}), connections, **kwargs))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


async def settle() -> None:
    """Let closes and connection_lost callbacks run on both sides."""
    for _ in range(5):
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- framing of answers


async def test_content_length_answer_split_across_packets_is_read_whole(server, make_client):
    def slow(request: Received, transport: asyncio.Transport) -> None:
        data = answer(201, b'{"sid": "SM1", "status": "queued"}', ("X-Thing: a",))
        loop = asyncio.get_running_loop()
        for i, at in enumerate(range(0, len(data), 7)):
            loop.call_later(0.002 * i, transport.write, data[at:at + 7])

    server.handler = slow
    client = make_client()
    response = await client.post(server.url, content=b"{}")
    assert (response.status_code, response.reason_phrase) == (201, "Whatever")
    assert response.json() == {"sid": "SM1", "status": "queued"}
    assert response.is_success and response.headers["x-thing"] == "a"


async def test_chunked_answer_is_joined(server, make_client):
    def chunked(request: Received, transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        asyncio.get_running_loop().call_later(0.01, transport.write, b"6\r\n world\r\n0\r\n\r\n")

    server.handler = chunked
    client = make_client()
    assert (await client.post(server.url)).text == "hello world"
    assert (await client.post(server.url)).text == "hello world"
    assert server.accepted == 1  # a chunked answer keeps the connection


async def test_answer_delimited_by_the_close_is_read_to_the_end(server, make_client):
    def until_close(request: Received, transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, transport.write, b"second part")
        loop.call_later(0.02, transport.close)

    server.handler = until_close
    client = make_client()
    assert (await client.post(server.url)).text == "first part, second part"
    assert (await client.post(server.url)).text == "first part, second part"
    assert server.accepted == 2


async def test_http_1_0_answer_is_not_kept_alive(server, make_client):
    server.handler = lambda request, transport: transport.write(answer(version="1.0"))  # and the server stays open
    client = make_client()
    for _ in range(3):
        assert (await client.post(server.url)).json() == {"ok": True}
    assert server.accepted == 3


async def test_interim_100_continue_is_skipped(server, make_client):
    server.handler = lambda request, transport: transport.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(202))
    client = make_client()
    assert (await client.post(server.url)).status_code == 202


async def test_answer_cut_short_is_an_http_error_and_not_resent(server, make_client):
    def truncated(request: Received, transport: asyncio.Transport) -> None:
        transport.write(answer(body=b'{"ok": true}')[:-4])
        transport.close()

    client = make_client()
    await client.post(server.url)  # the connection has been used: still no second try for a partial answer
    server.handler = truncated
    with pytest.raises(HttpError):
        await client.post(server.url)
    assert len(server.received) == 2


async def test_garbage_answer_is_an_http_error(server, make_client):
    server.handler = lambda request, transport: transport.write(b"SMTP/2 hello there\r\n\r\n")
    client = make_client()
    with pytest.raises(HttpError):
        await client.post(server.url)


async def test_response_headers_are_case_insensitive(server, make_client):
    server.handler = lambda request, transport: transport.write(
        answer(429, headers=("Retry-After: 7", "X-Request-ID: abc", "Set-Cookie: a=1", "Set-Cookie: b=2")))
    client = make_client()
    response = await client.post(server.url)
    assert response.headers.get("retry-after") == "7"
    assert response.headers["x-request-id"] == response.headers["X-REQUEST-ID"] == "abc"
    assert response.headers.getall("set-cookie") == ["a=1", "b=2"]
    assert not response.is_success


# ---------------------------------------------------------------- keep-alive and the pool


async def test_sequential_requests_share_one_kept_alive_connection(server, make_client):
    client = make_client(connections=4)
    for _ in range(10):
        assert (await client.post(server.url, content=b"{}")).status_code == 200
    assert server.accepted == 1 and len(server.received) == 10


async def test_never_more_connections_than_the_pool_allows(server, make_client):
    def later(request: Received, transport: asyncio.Transport) -> None:
        asyncio.get_running_loop().call_later(0.02, transport.write, answer(body=request.body))

    server.handler = later
    client = make_client(connections=3)
    responses = await asyncio.gather(*(client.post(server.url, content=str(i)) for i in range(30)))
    assert [r.text for r in responses] == [str(i) for i in range(30)]
    assert server.most_live == 3 and server.accepted == 3


async def test_server_connection_close_is_honoured(server, make_client):
    server.handler = lambda request, transport: transport.write(answer(headers=("Connection: close",)))
    client = make_client()
    for _ in range(3):
        assert (await client.post(server.url)).status_code == 200
    assert server.accepted == 3  # the server left each one open, the client did not reuse it
    await settle()
    assert not server.live


async def test_connection_closed_while_idle_is_replaced(server, make_client):
    client = make_client()
    await client.post(server.url)
    server.drop_connections()
    await settle()
    assert (await client.post(server.url)).status_code == 200
    assert [r.connection for r in server.received] == [1, 2]


async def test_stale_kept_alive_connection_is_retried_once_on_a_new_one(server, make_client):
    def drop_second(request: Received, transport: asyncio.Transport) -> None:
        if len(server.received) == 2:  # as if the server had closed it idle just as the request left
            transport.close()
        else:
            transport.write(answer())

    server.handler = drop_second
    client = make_client()
    await client.post(server.url)
    assert (await client.post(server.url, content=b"again")).status_code == 200
    assert [(r.connection, r.body) for r in server.received] == [(1, b""), (1, b"again"), (2, b"again")]


async def test_fresh_connection_closed_before_the_answer_is_not_retried(server, make_client):
    server.handler = lambda request, transport: transport.close()
    client = make_client()
    with pytest.raises(HttpError):
        await client.post(server.url)
    assert len(server.received) == 1


async def test_stale_retry_happens_only_once(server, make_client):
    client = make_client()
    await client.post(server.url)
    server.handler = lambda request, transport: transport.close()
    with pytest.raises(HttpError):
        await client.post(server.url)
    assert [r.connection for r in server.received] == [1, 1, 2]


async def test_aclose_closes_every_connection_and_the_client_works_again(server, make_client):
    client = make_client(connections=3)
    server.handler = lambda request, transport: asyncio.get_running_loop().call_later(0.01, transport.write, answer())
    await asyncio.gather(*(client.post(server.url) for _ in range(3)))
    assert len(server.live) == 3
    await client.aclose()
    await settle()
    assert not server.live
    assert (await client.post(server.url)).status_code == 200
    assert server.accepted == 4


async def test_requests_in_flight_or_in_line_fail_when_the_client_is_closed(server, make_client):
    server.handler = lambda request, transport: None
    client = make_client(connections=1)
    posts = [asyncio.ensure_future(client.post(server.url)) for _ in range(2)]
    await settle()
    await client.aclose()
    results = await asyncio.gather(*posts, return_exceptions=True)
    assert all(isinstance(r, HttpError) and isinstance(r, HTTP_ERRORS) for r in results), results

async def test_client_made_outside_a_running_loop_works(server, settings):
    client = await asyncio.to_thread(HttpClient, settings, 2)
    assert (await client.post(server.url)).status_code == 200
    await client.aclose()


async def test_server_that_is_down_is_an_os_error(make_client):
    client = make_client()
    with pytest.raises(OSError):
        await client.post("http://127.0.0.1:9/nothing")


# ---------------------------------------------------------------- timeouts


async def test_no_answer_times_out_and_the_connection_is_not_reused(server, make_client):
    server.handler = lambda request, transport: None if len(server.received) == 1 else transport.write(answer())
    client = make_client(timeout=0.2)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await client.post(server.url)
    assert 0.18 < time.monotonic() - started < 1.0
    assert (await client.post(server.url)).status_code == 200
    assert [r.connection for r in server.received] == [1, 2]
    await settle()
    assert {c.number for c in server.live} == {2}  # the timed-out one was closed


async def test_timeout_counts_from_the_request_on_a_busy_kept_alive_connection(server, make_client):
    answers = iter([0.0, 0.2, 0.5])  # the third answer comes after the timeout

    def delayed(request: Received, transport: asyncio.Transport) -> None:
        asyncio.get_running_loop().call_later(next(answers), transport.write, answer())

    server.handler = delayed
    client = make_client(connections=1, timeout=0.3)
    await client.post(server.url)
    await asyncio.sleep(0.2)  # the timer armed by the first request fires at 0.3 s, amid the second (0.2 to 0.4 s)
    assert (await client.post(server.url)).status_code == 200
    with pytest.raises(asyncio.TimeoutError):
        await client.post(server.url)


async def test_time_spent_waiting_for_a_connection_counts_towards_the_timeout(server, make_client):
    answers = iter([0.2, 0.2])

    def delayed(request: Received, transport: asyncio.Transport) -> None:
        asyncio.get_running_loop().call_later(next(answers), transport.write, answer())

    server.handler = delayed
    client = make_client(connections=1, timeout=0.3)
    first, second = await asyncio.gather(client.post(server.url), client.post(server.url), return_exceptions=True)
    assert first.status_code == 200  # answered at 0.2 s
    assert isinstance(second, asyncio.TimeoutError)  # 0.2 s in line and a 0.2 s answer: over 0.3 s in all
    assert server.accepted == 1


async def test_request_cancelled_by_the_caller_closes_its_connection(server, make_client):
    server.handler = lambda request, transport: None if len(server.received) == 1 else transport.write(answer())
    client = make_client()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.post(server.url), 0.1)  # the caller's own timeout, shorter than the client's
    assert (await client.post(server.url)).status_code == 200
    await settle()
    assert [r.connection for r in server.received] == [1, 2] and {c.number for c in server.live} == {2}


# ---------------------------------------------------------------- what is sent


async def test_form_data_is_url_encoded(server, make_client):
    client = make_client()
    await client.post(server.url, data={"To": "+15551234567", "Body": "Zoé & co = 50%"})
    request = server.received[0]
    assert request.header("content-type") == ["application/x-www-form-urlencoded"]
    assert parse_qs(request.body.decode()) == {"To": ["+15551234567"], "Body": ["Zoé & co = 50%"]}
    assert request.header("content-length") == [str(len(request.body))]


async def test_text_content_is_utf8_and_bytes_are_sent_as_they_are(server, make_client):
    client = make_client()
    await client.post(server.url, content="héllo")
    await client.post(server.url, content=b"\x00\xff", headers={"Content-Type": "application/json"})
    text, raw = server.received
    assert text.body == "héllo".encode() and text.header("content-type") == ["text/plain; charset=utf-8"]
    assert raw.body == b"\x00\xff" and raw.header("content-type") == ["application/json"]


async def test_request_line_host_and_default_headers(server, make_client):
    client = make_client(headers={"X-Api": "default", "Content-Type": "application/json"}, auth=("AC123", "s3cret"))
    await client.post(server.url, content=b"{}")
    request = server.received[0]
    assert request.target == "/v1/send?x=1"
    assert request.header("host") == [server.url.split("/")[2]]
    assert request.header("user-agent") == ["herald"]
    assert request.header("authorization") == ["Basic " + base64.b64encode(b"AC123:s3cret").decode()]
    assert request.header("x-api") == ["default"] and request.header("content-type") == ["application/json"]


async def test_request_headers_replace_defaults_whatever_their_case(server, make_client):
    client = make_client(headers={"X-Api": "default", "User-Agent": "Herald-Webhook/1"}, auth=("a", "b"))
    await client.post(server.url, content=b"{}", headers={"x-API": "mine", "AUTHORIZATION": "Bearer t",
                                                           "Content-Length": "999", "Host": "evil.example"})
    request = server.received[0]
    assert request.header("x-api") == ["mine"] and request.header("authorization") == ["Bearer t"]
    assert request.header("user-agent") == ["Herald-Webhook/1"]
    assert request.header("content-length") == ["2"] and request.header("host") == [server.url.split("/")[2]]


async def test_newline_in_a_header_is_refused(server, make_client):
    client = make_client()
    with pytest.raises(ValueError):
        await client.post(server.url, headers={"X-Id": "1\r\nX-Injected: yes"})
    assert not server.received


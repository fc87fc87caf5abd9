"""Small helpers the API tests share: unique names, the bearer header, the error shape."""

from __future__ import annotations

import itertools
import secrets

import httpx

RUN = secrets.token_hex(3)
_names = itertools.count(1)


def unique_name(what: str) -> str:
    """Names carry a per-run token so the suite can be re-run against the same database."""
    return f"test-{RUN}-{what}-{next(_names)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    """The response is the shared error shape with this status and code; returns its "error"."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["status"] == status
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


async def new_key(settings, role: str = "analyst") -> str:
    """A key of ``role`` issued straight in PostgreSQL (for tests that talk to a served API over HTTP)."""
    import asyncpg

    from api.keys import issue_key

    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        async with conn.transaction():
            return (await issue_key(conn, f"test-{role}-{secrets.token_hex(4)}", role, actor=None)).key
    finally:
        await conn.close()


def serve(app, name: str = "api"):
    """Run ``app`` under a real uvicorn server on a free port in a thread; returns (base URL, stop())."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", stop

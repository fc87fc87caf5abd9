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

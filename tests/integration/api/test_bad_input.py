"""Each class of bad input against the real app and stack: a 4xx in the error shape, never a 5xx."""

from __future__ import annotations

import json

import httpx
import orjson
import pytest

from api.app import create_app
from tests.helpers.api import assert_error, bearer, serve, unique_name

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def served(api_settings):
    url, stop = serve(create_app(api_settings), name="bad-input-api")
    yield url
    stop()


def _fields(response: httpx.Response) -> set[str]:
    return {f["field"] for f in response.json()["error"]["fields"]}


def test_nul_in_text_is_422_naming_the_field(client, admin_key):
    body = orjson.dumps({"name": unique_name("nul") + "\x00", "criteria": {"conditions": [], "logic": "AND"}})
    response = client.post("/api/v1/segments", headers={**bearer(admin_key), **JSON}, content=body)
    assert_error(response, 422, "validation_error")
    assert _fields(response) == {"name"}
    audit = client.get("/api/v1/audit", params={"actor": "a\x00"}, headers=bearer(admin_key))
    assert_error(audit, 422, "validation_error")


def test_ints_past_64_bits_in_paths_cursors_and_bodies_are_4xx(client, admin_key):
    auth = bearer(admin_key)
    assert_error(client.get("/api/v1/campaigns/99999999999999999999", headers=auth), 404, "not_found")
    assert_error(client.get("/api/v1/segments", params={"cursor": "czk5OTk5OTk5OTk5OTk5OTk5OTk5"}, headers=auth),
                 422, "validation_error")
    for big in (b"18446744073709551616", b"1e19"):
        body = b'{"name": "x", "channels": ["email"], "target_segment_id": ' + big + b"}"
        response = client.post("/api/v1/campaigns", headers={**auth, **JSON}, content=body)
        assert_error(response, 422, "validation_error")
        assert _fields(response) == {"target_segment_id"}


def test_superscript_limit_and_empty_cursor_and_unknown_params_are_422_everywhere(client, admin_key):
    for path in ("/api/v1/campaigns", "/api/v1/templates", "/api/v1/segments", "/api/v1/journeys"):
        for query, field in (({"limit": "²"}, "limit"), ({"cursor": ""}, "cursor"), ({"stauts": "x"}, "stauts")):
            response = client.get(path, params=query, headers=bearer(admin_key))
            assert_error(response, 422, "validation_error")
            assert _fields(response) == {field}, (path, query)


def test_unknown_channel_with_content_is_422(client, admin_key):
    body = {"name": unique_name("fax"), "channels": ["fax"], "content": {"fax": {"body": "hi"}}}
    response = client.post("/api/v1/campaigns", headers=bearer(admin_key), json=body)
    assert_error(response, 422, "validation_error")
    assert "content.fax" in _fields(response)


def test_deep_json_is_422_naming_the_field(client, admin_key):
    deep: object = 1
    for _ in range(300):
        deep = {"x": deep}
    body = {"name": unique_name("deep"), "channels": ["email"], "goals": deep}
    response = client.post("/api/v1/campaigns", headers={**bearer(admin_key), **JSON}, content=_dumps_deep(body))
    assert_error(response, 422, "validation_error")
    assert _fields(response) == {"goals"}


def _dumps_deep(value: object) -> bytes:
    return json.dumps(value).encode()  # orjson refuses to write 300 levels


def test_big_bodies_get_413_before_being_read(served):
    url = served
    length = httpx.post(f"{url}/api/v1/unsubscribe", content=b" " * (2**20 + 1), headers=JSON, timeout=30)
    assert_error(length, 413, "body_too_large")

    def chunks():
        for _ in range(64):
            yield b" " * 65536

    chunked = httpx.post(f"{url}/api/v1/unsubscribe", content=chunks(), headers=JSON, timeout=30)
    assert_error(chunked, 413, "body_too_large")


def test_non_json_content_types_are_415(client):
    for media, body in (("application/x-www-form-urlencoded", b"token=x"), ("text/plain", b'{"token": "x"}'),
                        ("application/xml", b"<token>x</token>")):
        response = client.post("/api/v1/unsubscribe", content=body, headers={"content-type": media})
        assert_error(response, 415, "unsupported_media_type")


def test_unsubscribe_page_answers_json_to_a_client_asking_for_json(client):
    page = client.get("/u/not-a-token")
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    as_json = client.get("/u/not-a-token", headers={"accept": "application/json"})
    assert as_json.status_code == 400 and as_json.json()["error"]["fields"][0]["field"] == "token"
    document = client.get("/api/v1/openapi.json").json()
    error_types = document["paths"]["/u/{token}"]["get"]["responses"]["default"]["content"]
    assert set(error_types) == {"text/html", "application/json"}
    assert "204" in document["paths"]["/api/v1/campaigns/{campaign_id}"]["delete"]["responses"]


"""Each class of bad input the API refuses at its root (api.inputs, api.body_limit, api.errors), in milliseconds."""

from __future__ import annotations

import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api import inputs
from api.body_limit import BodyLimitMiddleware
from api.errors import exception_handlers, parse_body, read_form
from api.openapi import PAGED, operation
from pipeline.campaigns import content_problems


def test_nul_anywhere_in_a_body_is_named():
    problems = inputs.json_problems({"name": "a\x00b", "goals": {"x": ["ok", "n\x00"]}}, 32)
    assert problems == [("goals.x.1", "text may not contain a NUL character"),
                        ("name", "text may not contain a NUL character")]


def test_integers_past_64_bits_are_refused_and_64_bit_ones_kept():
    data, problems = inputs.load_json(b'{"exclude_segments": [1, 18446744073709551616], "id": 9223372036854775807}', 32)
    assert problems == [("exclude_segments.1", "an integer beyond 64 bits")]
    assert data["id"] == 2**63 - 1
    assert inputs.load_json(b'{"id": -9223372036854775809}', 32)[1] == [("id", "an integer beyond 64 bits")]
    assert inputs.load_json(b'{"id": 1e19, "weight": 0.5}', 32)[1] == [("id", "a number beyond the 64-bit range")]


def test_deep_json_is_refused_naming_the_top_field():
    shallow = {"goals": {"a": {"b": 1}}}
    assert inputs.json_problems(shallow, 32) == []
    deep = b'{"goals": ' + b"[" * 300 + b"]" * 300 + b"}"
    assert inputs.load_json(deep, 32)[1] == [("goals", "JSON nested deeper than 32 levels")]
    very_deep = b"[" * 100_000 + b"]" * 100_000  # past Python's own recursion limit: still a 422, not a crash
    assert inputs.load_json(very_deep, 32)[1] == [("(body)", "JSON nested deeper than 32 levels")]


def test_non_finite_numbers_are_not_json():
    for raw in (b"1e400", b"NaN", b'{"x": Infinity}'):
        try:
            inputs.load_json(raw, 32)
        except inputs.BadJson:
            continue
        raise AssertionError(raw)


def test_limit_is_ascii_digits_within_64_bits():
    assert inputs.ascii_int("50") == 50
    for raw in ("²", "٣", "-1", "1e3", " 5", "", "99999999999999999999"):
        assert inputs.ascii_int(raw) is None, raw


def test_query_rule_refuses_unknown_names_empty_cursor_bad_limit_and_nul():
    problems = dict(inputs.query_problems([("limit", "²"), ("cursor", ""), ("stauts", "x"), ("q", "a\x00")],
                                          ("limit", "cursor", "q")))
    assert set(problems) == {"limit", "cursor", "stauts", "q"}
    assert inputs.query_problems([("limit", "10"), ("cursor", "abc")], ("limit", "cursor")) == []


def test_unknown_channel_with_content_is_a_problem_not_a_key_error():
    problems = content_problems(["fax"], {"fax": {"body": "hi"}}, {}, checks=None)  # type: ignore[arg-type]
    assert problems == [("content.fax", "unknown channel 'fax'; known: email, sms, push, in_app, webhook")]


class _Named(BaseModel):
    name: str


@operation("echo", body=_Named, query=PAGED)
async def _echo(request: Request) -> JSONResponse:
    return JSONResponse((await parse_body(request, _Named)).model_dump())


def _client(limit: int = 1024) -> TestClient:
    app = Starlette(routes=[Route("/echo/{n:int}", _echo, methods=["POST"])], exception_handlers=exception_handlers,
                    middleware=[])
    app.add_middleware(BodyLimitMiddleware, limit=limit)
    return TestClient(app)


def _code(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_body_over_the_limit_gets_413_by_length_and_by_chunks():
    client = _client()
    assert client.post("/echo/1", json={"name": "x"}).status_code == 200
    assert _code(client.post("/echo/1", content=b"{" + b" " * 2000 + b"}",
                             headers={"content-type": "application/json"})) == (413, "body_too_large")

    def chunks():
        for _ in range(10):
            yield b" " * 200

    assert _code(client.post("/echo/1", content=chunks(), headers={"content-type": "application/json"})) == (
        413, "body_too_large")


def test_a_body_that_is_not_declared_json_gets_415():
    client = _client()
    for media in ("application/x-www-form-urlencoded", "text/plain", "application/xml"):
        response = client.post("/echo/1", content=b'{"name": "x"}', headers={"content-type": media})
        assert _code(response) == (415, "unsupported_media_type"), media
    assert client.post("/echo/1", content=b'{"name": "x"}', headers={"content-type": "application/merge-patch+json"}
                       ).status_code == 200


def test_path_ids_past_64_bits_are_404_and_bad_query_is_422():
    client = _client()
    assert client.post("/echo/99999999999999999999", json={"name": "x"}).status_code == 404
    response = client.post("/echo/1?limit=%C2%B2&cursor=", json={"name": "x"})
    assert response.status_code == 422
    assert {f["field"] for f in response.json()["error"]["fields"]} == {"limit", "cursor"}
    nul = client.post("/echo/1", content=orjson.dumps({"name": "a\x00"}), headers={"content-type": "application/json"})
    assert _code(nul) == (422, "validation_error") and nul.json()["error"]["fields"][0]["field"] == "name"


async def _form(request: Request) -> JSONResponse:
    return JSONResponse(dict(await read_form(request)))


def test_forms_refuse_nul_and_other_media_types():
    app = Starlette(routes=[Route("/form", _form, methods=["POST"])], exception_handlers=exception_handlers)
    client = TestClient(app)
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert client.post("/form", content=b"Body=STOP&From=%2B15550100", headers=form).json() == {
        "Body": "STOP", "From": "+15550100"}
    nul = client.post("/form", content=b"Body=ST%00OP", headers=form)
    assert _code(nul) == (422, "validation_error") and nul.json()["error"]["fields"][0]["field"] == "Body"
    assert _code(client.post("/form", json={"Body": "STOP"})) == (415, "unsupported_media_type")

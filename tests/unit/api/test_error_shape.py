"""The one error shape, on a tiny app with Herald's handlers and no servers behind it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api.errors import ApiError, FieldProblem, exception_handlers, parse_body


class Variant(BaseModel):
    id: str
    weight: int


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    variants: list[Variant]


async def create_experiment(request: Request) -> JSONResponse:
    experiment = await parse_body(request, Experiment)
    return JSONResponse(experiment.model_dump(), status_code=201)


async def conflict(request: Request) -> JSONResponse:
    problem = FieldProblem(field="status", reason="is active")
    raise ApiError(409, "campaign_not_draft", "only a draft campaign can be edited", [problem])


async def teapot(request: Request) -> JSONResponse:
    raise HTTPException(418)


async def crash(request: Request) -> JSONResponse:
    raise RuntimeError("password=hunter2 at db.internal:5432")


@pytest.fixture(scope="module")
def client():
    app = Starlette(
        routes=[
            Route("/experiments", create_experiment, methods=["POST"]),
            Route("/experiments", conflict, methods=["PATCH"]),
            Route("/teapot", teapot),
            Route("/crash", crash),
        ],
        exception_handlers=exception_handlers,
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert body["error"]["status"] == status
    return body["error"]


def test_api_error_keeps_its_code_message_and_fields(client):
    assert error_of(client.patch("/experiments"), 409) == {
        "status": 409,
        "code": "campaign_not_draft",
        "message": "only a draft campaign can be edited",
        "fields": [{"field": "status", "reason": "is active"}],
    }


def test_validation_errors_name_dotted_field_paths(client):
    response = client.post("/experiments", json={"name": "ab", "variants": [{"id": "A", "weight": "heavy"}], "x": 1})

    error = error_of(response, 422)
    assert error["code"] == "validation_error"
    assert {f["field"] for f in error["fields"]} == {"variants.0.weight", "x"}
    assert "variants.0.weight" in error["message"]


def test_body_that_is_not_an_object_is_422_on_the_body(client):
    error = error_of(client.post("/experiments", json=[1, 2]), 422)

    assert error["fields"][0]["field"] == "(body)"


@pytest.mark.parametrize("body", [b"", b"{", b"{'name': 'single quotes'}"])
def test_malformed_json_is_400(client, body):
    assert error_of(client.post("/experiments", content=body), 400)["code"] == "malformed_json"


def test_unknown_route_and_wrong_method(client):
    assert error_of(client.get("/nowhere"), 404)["code"] == "not_found"
    response = client.delete("/experiments")
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "PATCH, POST"


def test_other_http_exceptions_get_a_code_from_their_status(client):
    assert error_of(client.get("/teapot"), 418)["code"] == "i_m_a_teapot"


def test_unexpected_exception_is_500_without_details(client):
    error = error_of(client.get("/crash"), 500)

    assert error["code"] == "internal_error"
    assert "hunter2" not in client.get("/crash").text
    assert "Traceback" not in client.get("/crash").text

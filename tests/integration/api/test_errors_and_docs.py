"""The one error shape from the running app, /metrics and the OpenAPI document."""

from __future__ import annotations

import re

from starlette.routing import Route

from tests.helpers.api import assert_error, bearer


def test_unknown_route_is_404_in_the_error_shape(client):
    error = assert_error(client.get("/api/v1/no-such-thing"), 404, "not_found")

    assert "/api/v1/no-such-thing" in error["message"]


def test_wrong_method_is_405_listing_every_allowed_method(client):
    response = client.put("/api/v1/api-keys")

    assert_error(response, 405, "method_not_allowed")
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["allow"].split(",")}


def test_malformed_json_is_400(client, admin_key):
    response = client.post("/api/v1/api-keys", headers=bearer(admin_key), content=b'{"name": "x", "role": ')

    assert_error(response, 400, "malformed_json")


def test_invalid_role_is_422_naming_the_field(client, admin_key):
    response = client.post("/api/v1/api-keys", headers=bearer(admin_key), json={"name": "x", "role": "owner"})

    error = assert_error(response, 422, "validation_error")
    assert [f["field"] for f in error["fields"]] == ["role"]
    assert "admin" in error["fields"][0]["reason"]


def test_missing_and_unexpected_fields_are_each_named(client, admin_key):
    response = client.post("/api/v1/api-keys", headers=bearer(admin_key), json={"role": "admin", "colour": "red"})

    error = assert_error(response, 422, "validation_error")
    assert {f["field"] for f in error["fields"]} == {"name", "colour"}


def test_metrics_count_requests_by_route_template(client, admin_key):
    client.get("/healthz")
    client.delete("/api/v1/api-keys/123456789012", headers=bearer(admin_key))

    text = client.get("/metrics").text

    assert re.search(r'herald_api_requests_total\{method="GET",route="/healthz",status="200"\} [1-9]', text)
    assert 'route="/api/v1/api-keys/{key_id:int}",status="404"' in text
    assert "123456789012" not in text
    assert "herald_api_request_duration_seconds_bucket" in text


def test_openapi_document_covers_every_route(client):
    response = client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    for route in client.app.routes:
        assert isinstance(route, Route)
        path = re.sub(r":\w+}", "}", route.path)
        for method in route.methods - {"HEAD"}:
            assert method.lower() in document["paths"][path], f"{method} {path} undocumented"
    assert {"/healthz", "/api/v1/api-keys", "/metrics", "/api/v1/me"} <= set(document["paths"])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "ErrorBody" in document["components"]["schemas"]
    issue = document["paths"]["/api/v1/api-keys"]["post"]
    assert issue["security"] == [{"bearer": []}]
    assert issue["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/NewApiKey"}
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["paths"]["/api/v1/api-keys/{key_id}"]["delete"]["parameters"][0]["schema"] == {
        "type": "integer", "minimum": 0, "maximum": 2**63 - 1}

"""Rate limits on the real app and the real Redis: a key's N+1th request within its burst gets 429 with
``Retry-After``, another key is not affected, a public route is limited per client address, and the
OpenAPI document lists the 429 where it applies."""

from __future__ import annotations

import secrets
import time

from starlette.testclient import TestClient

from api.app import create_app
from tests.helpers.api import assert_error, bearer, new_key


def _limited_app(api_settings, **limits):
    return create_app(api_settings.model_copy(update={"rate_limit_burst_s": 1.0, **limits}))


async def test_a_key_over_its_limit_gets_429_with_retry_after_and_another_key_does_not(api_settings, retire_keys):
    first, second = await new_key(api_settings, "analyst"), await new_key(api_settings, "analyst")
    retire_keys(first), retire_keys(second)
    # Three a second, a burst of three: the fourth request in the same instant is over.
    with TestClient(_limited_app(api_settings, api_rate_limits="admin=1000,marketer=1000,analyst=3")) as client:
        answers = [client.get("/api/v1/me", headers=bearer(first)) for _ in range(4)]
        assert [a.status_code for a in answers[:3]] == [200, 200, 200], answers[-1].text
        assert [int(a.headers["RateLimit-Remaining"]) for a in answers[:3]] == [2, 1, 0]
        assert all(a.headers["RateLimit-Limit"] == "3" for a in answers[:3])
        error = assert_error(answers[3], 429, "rate_limited")
        assert "this API key" in error["message"]
        assert answers[3].headers["Retry-After"] == "1"  # one token comes back in a third of a second
        assert answers[3].headers["RateLimit-Remaining"] == "0"

        other = client.get("/api/v1/me", headers=bearer(second))
        assert other.status_code == 200, other.text
        assert other.headers["RateLimit-Remaining"] == "2"

        time.sleep(0.4)  # a token back for the first key
        assert client.get("/api/v1/me", headers=bearer(first)).status_code == 200


async def test_a_key_limit_set_by_id_overrides_its_role(api_settings, retire_keys, client, admin_key):
    key = await new_key(api_settings, "analyst")
    retire_keys(key)
    key_id = client.get("/api/v1/me", headers=bearer(key)).json()["key_id"]
    app = _limited_app(api_settings, api_rate_limits="analyst=1000", api_rate_limit_keys=f"{key_id}=1")
    with TestClient(app) as limited:
        assert limited.get("/api/v1/me", headers=bearer(key)).status_code == 200
        assert_error(limited.get("/api/v1/me", headers=bearer(key)), 429, "rate_limited")
        assert limited.get("/api/v1/me", headers=bearer(admin_key)).status_code == 200


def test_public_routes_are_limited_per_client_address(api_settings):
    app = _limited_app(api_settings, public_rate_limits="unsubscribe=2,tracking=2,callbacks=2")
    visitor = f"198.51.100.{secrets.randbelow(250) + 1}"  # TEST-NET-2: each run its own bucket
    neighbour = f"203.0.113.{secrets.randbelow(250) + 1}"
    with TestClient(app, client=(visitor, 40000)) as client:
        # Refusals count too: a forger guessing tokens spends the same bucket.
        assert [client.get("/t/o/not-a-token").status_code for _ in range(2)] == [400, 400]
        refused = client.get("/t/c/not-a-token")  # open and click share the tracking group
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1

        assert [client.post("/api/v1/unsubscribe", json={"token": "x"}).status_code for _ in range(3)][2] == 429
        posts = [client.post("/callbacks/twilio/status", content=b"a=b",
                             headers={"content-type": "application/x-www-form-urlencoded"}) for _ in range(3)]
        assert [p.status_code for p in posts] == [403, 403, 429]
    with TestClient(app, client=(neighbour, 40000)) as other:
        assert other.get("/t/o/not-a-token").status_code == 400


def test_limits_off_mean_no_limit_headers(api_settings):
    app = create_app(api_settings.model_copy(update={"rate_limits": False}))
    with TestClient(app) as client:
        answer = client.get("/t/o/not-a-token")
        assert answer.status_code == 400 and "RateLimit-Limit" not in answer.headers


def test_the_openapi_document_lists_429_where_limits_apply(client):
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path, method in [("/api/v1/campaigns", "get"), ("/api/v1/me", "get"), ("/t/o/{token}", "get"),
                         ("/t/c/{token}", "get"), ("/u/{token}", "post"), ("/u/{token}", "get"),
                         ("/api/v1/unsubscribe", "post"), ("/callbacks/twilio/status", "post"),
                         ("/callbacks/sendgrid/events", "post")]:
        assert paths[path][method]["responses"]["429"] == {"$ref": "#/components/responses/RateLimited"}, path
    assert "429" not in paths["/healthz"]["get"]["responses"]

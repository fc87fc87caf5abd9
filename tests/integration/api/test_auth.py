"""Bearer keys end to end: missing, malformed, unknown, revoked, wrong role, right role, cache."""

from __future__ import annotations

import time

import asyncpg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import generate_key
from tests.helpers.api import assert_error, bearer


def test_request_without_key_is_401_with_bearer_challenge(client):
    response = client.get("/api/v1/me")

    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-key", "Bearer hk_short_secret", "Basic dXNlcjpwYXNz", "Bearer", f"Bearer {generate_key().key}"],
    ids=["garbage", "wrong-lengths", "basic-scheme", "empty-token", "well-formed-but-unknown"],
)
def test_malformed_or_unknown_key_is_401(client, authorization):
    response = client.get("/api/v1/me", headers={"Authorization": authorization})

    assert_error(response, 401, "unauthorized")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_revoked_key_is_401(client, admin_key, issue_key):
    issued = issue_key("marketer")
    assert client.get("/api/v1/me", headers=bearer(issued["key"])).status_code == 200

    assert client.delete(f"/api/v1/api-keys/{issued['key_id']}", headers=bearer(admin_key)).status_code == 200

    assert_error(client.get("/api/v1/me", headers=bearer(issued["key"])), 401, "unauthorized")


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        ("analyst", "POST", "/api/v1/api-keys"),
        ("marketer", "GET", "/api/v1/api-keys"),
        ("analyst", "DELETE", "/api/v1/api-keys/1"),
    ],
)
def test_key_of_the_wrong_role_is_403_naming_the_allowed_role(client, issue_key, role, method, path):
    issued = issue_key(role)

    response = client.request(method, path, headers=bearer(issued["key"]), json={"name": "x", "role": "analyst"})

    error = assert_error(response, 403, "forbidden")
    assert "admin" in error["message"] and role in error["message"]


@pytest.mark.parametrize("role", ["admin", "marketer", "analyst"])
def test_any_role_may_ask_who_it_is(client, issue_key, role):
    issued = issue_key(role)

    response = client.get("/api/v1/me", headers=bearer(issued["key"]))

    assert response.status_code == 200
    assert response.json() == {"key_id": issued["key_id"], "name": issued["name"], "role": role}


def test_using_a_key_records_last_used_at(client, admin_key, issue_key):
    issued = issue_key("analyst")
    client.get("/api/v1/me", headers=bearer(issued["key"]))

    listed = client.get("/api/v1/api-keys", headers=bearer(admin_key)).json()["api_keys"]

    assert next(k for k in listed if k["key_id"] == issued["key_id"])["last_used_at"] is not None


@pytest.fixture(scope="module")
def cached_client(api_settings):
    """A second app whose verified keys are cached for one second."""
    with TestClient(create_app(api_settings.model_copy(update={"api_key_cache_s": 1.0}))) as client:
        yield client


async def test_cached_key_stays_valid_until_the_cache_window_ends(cached_client, api_settings, issue_key):
    issued = issue_key("marketer")
    assert cached_client.get("/api/v1/me", headers=bearer(issued["key"])).status_code == 200

    # Revoked behind the API's back, as another API process would.
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    try:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", issued["key_id"])
    finally:
        await conn.close()
    still_cached = cached_client.get("/api/v1/me", headers=bearer(issued["key"]))
    time.sleep(1.1)
    after_window = cached_client.get("/api/v1/me", headers=bearer(issued["key"]))

    assert still_cached.status_code == 200
    assert_error(after_window, 401, "unauthorized")


def test_revoking_through_the_api_ends_a_cached_key_at_once(cached_client, admin_key, issue_key):
    issued = issue_key("marketer")
    assert cached_client.get("/api/v1/me", headers=bearer(issued["key"])).status_code == 200

    assert cached_client.delete(f"/api/v1/api-keys/{issued['key_id']}", headers=bearer(admin_key)).status_code == 200

    assert_error(cached_client.get("/api/v1/me", headers=bearer(issued["key"])), 401, "unauthorized")

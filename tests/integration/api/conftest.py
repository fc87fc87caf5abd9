"""Fixtures for the API against the real local stack.

The app runs in-process under starlette's TestClient, lifespan included, so it
opens real clients to Postgres, Redis, Cassandra and Kafka: if one is
unreachable the app does not start and every test here fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import key_digest
from api.keys import bootstrap_admin_key
from config import Settings
from tests.integration.api.helpers import bearer, unique_name


@pytest.fixture(scope="session")
def api_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """No key cache (revocation is immediate) and a private admin key file."""
    return settings.model_copy(update={"api_key_cache_s": 0, "local_dir": tmp_path_factory.mktemp("local")})


@pytest.fixture(scope="session")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as client:
        yield client


@pytest.fixture(scope="session")
async def retire_keys(api_settings: Settings) -> AsyncIterator[Callable[[str], None]]:
    """Keys registered here, and every key they issued, are revoked when the session ends.

    Test keys are real keys in the shared database (and admin ones sit in temp
    files), so none is left usable after the run.
    """
    keys: list[str] = []
    yield keys.append
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    try:
        await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL AND (key_hash = ANY($1)"
            " OR created_by IN (SELECT key_id FROM api_keys WHERE key_hash = ANY($1)))",
            [key_digest(key) for key in keys],
        )
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def admin_key(api_settings: Settings, retire_keys: Callable[[str], None]) -> str:
    key = await bootstrap_admin_key(api_settings)
    retire_keys(key)
    return key


@pytest.fixture(scope="session")
def issue_key(client: TestClient, admin_key: str) -> Callable[[str], dict]:
    """Issue a key of a role through the API; returns the 201 body (with the plaintext ``key``)."""

    def issue(role: str) -> dict:
        body = {"name": unique_name(role), "role": role}
        response = client.post("/api/v1/api-keys", headers=bearer(admin_key), json=body)
        assert response.status_code == 201, response.text
        return response.json()

    return issue

"""Fixtures for the API against the real local stack.

The app runs in-process under starlette's TestClient, lifespan included, so it
opens real clients to Postgres, Redis, Cassandra and Kafka: if one is
unreachable the app does not start and every test here fails.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import key_digest
from api.keys import bootstrap_admin_key
from config import Settings
from pipeline.pii import contact_columns
from pipeline.pii_keys import pii_keyring
from tests.helpers.api import bearer, unique_name


@pytest.fixture(scope="session")
def api_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """No key cache (revocation is immediate), a private admin key file, and public rate limits high enough
    for a whole session of tests from one client address (test_rate_limits.py sets its own low ones)."""
    return settings.model_copy(update={"api_key_cache_s": 0, "local_dir": tmp_path_factory.mktemp("local"),
                                       "public_rate_limits": "unsubscribe=1000,tracking=1000,callbacks=1000"})


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


_USER_BASE = random.randrange(3 * 10**12, 4 * 10**12, 10**6)
_next_id = iter(range(_USER_BASE, _USER_BASE + 10**6))

MakeUser = Callable[..., Awaitable[int]]


@pytest.fixture
async def make_user(api_settings) -> AsyncIterator[MakeUser]:
    """Insert users straight into PostgreSQL (ids far above the demo audience); delete them afterwards."""
    created: list[int] = []
    conn = await asyncpg.connect(api_settings.postgres_dsn)

    async def make(email: str | None = "") -> int:
        user_id = next(_next_id)
        address = f"pref-{user_id}@example.com" if email == "" else email
        contact = contact_columns(pii_keyring(api_settings), address, None)  # stored as ingestion stores it
        await conn.execute("INSERT INTO users (user_id, email_enc, email_idx) VALUES ($1, $2, $3)",
                           user_id, contact["email_enc"], contact["email_idx"])
        created.append(user_id)
        return user_id

    try:
        yield make
    finally:
        await conn.execute("DELETE FROM users WHERE user_id = ANY($1)", created)  # cascades to preferences
        await conn.close()

"""Issuing, listing and revoking keys, the audit trail, and the admin key bootstrap."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import asyncpg
import orjson

from api.auth import key_digest
from api.keys import bootstrap_admin_key
from config.settings import REPO_ROOT as REPO
from tests.helpers.api import assert_error, bearer, unique_name


async def audit_rows(settings, key_id: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        return await conn.fetch(
            "SELECT actor_key_id, actor, action, before, after FROM audit_log"
            " WHERE entity_type = 'api_key' AND entity_id = $1 ORDER BY audit_id",
            str(key_id),
        )
    finally:
        await conn.close()


def test_issued_key_is_shown_once_and_listed_without_secrets(client, admin_key):
    name = unique_name("issued")
    created = client.post("/api/v1/api-keys", headers=bearer(admin_key), json={"name": name, "role": "marketer"})

    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    issued = created.json()
    assert issued["key"].startswith(f"hk_{issued['prefix']}_") and len(issued["key"]) == 55
    assert issued["name"] == name and issued["role"] == "marketer" and issued["revoked_at"] is None

    listed = client.get("/api/v1/api-keys", headers=bearer(admin_key)).json()["api_keys"]
    mine = next(k for k in listed if k["key_id"] == issued["key_id"])
    assert mine == {k: v for k, v in issued.items() if k != "key"}
    assert issued["key"].encode() not in orjson.dumps(listed)


async def test_issuing_and_revoking_write_audit_rows(client, admin_key, api_settings, issue_key):
    issued = issue_key("analyst")
    revoked = client.delete(f"/api/v1/api-keys/{issued['key_id']}", headers=bearer(admin_key))
    again = client.delete(f"/api/v1/api-keys/{issued['key_id']}", headers=bearer(admin_key))

    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert again.status_code == 200 and again.json() == revoked.json()
    created_row, revoked_row = await audit_rows(api_settings, issued["key_id"])  # the second DELETE changed nothing
    assert created_row["action"] == "api_key.created" and created_row["before"] is None
    assert created_row["actor_key_id"] == issued["created_by"]
    assert orjson.loads(created_row["after"])["name"] == issued["name"]
    assert issued["key"] not in created_row["after"]
    assert revoked_row["action"] == "api_key.revoked"
    assert orjson.loads(revoked_row["before"])["revoked_at"] is None
    assert orjson.loads(revoked_row["after"])["revoked_at"] is not None


def test_revoking_an_unknown_key_is_404(client, admin_key):
    assert_error(client.delete("/api/v1/api-keys/9223372036854775807", headers=bearer(admin_key)), 404, "not_found")
    assert_error(client.delete("/api/v1/api-keys/99999999999999999999", headers=bearer(admin_key)), 404, "not_found")


async def test_bootstrap_writes_a_private_file_and_reuses_the_key(api_settings, tmp_path, client, retire_keys):
    settings = api_settings.model_copy(update={"local_dir": tmp_path / "fresh"})

    first = await bootstrap_admin_key(settings)
    second = await bootstrap_admin_key(settings)
    retire_keys(first)

    assert first == second
    assert settings.admin_key_file.read_text().strip() == first
    assert stat.S_IMODE(os.stat(settings.admin_key_file).st_mode) == 0o600
    me = client.get("/api/v1/me", headers=bearer(first))
    assert me.status_code == 200 and me.json()["role"] == "admin" and me.json()["name"] == "bootstrap admin"


async def test_bootstrap_replaces_a_revoked_key(api_settings, tmp_path, client, retire_keys):
    settings = api_settings.model_copy(update={"local_dir": tmp_path})
    first = await bootstrap_admin_key(settings)
    os.chmod(settings.admin_key_file, 0o644)
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", key_digest(first))
    finally:
        await conn.close()

    replacement = await bootstrap_admin_key(settings)
    retire_keys(replacement)

    assert replacement != first
    assert settings.admin_key_file.read_text().strip() == replacement
    assert stat.S_IMODE(os.stat(settings.admin_key_file).st_mode) == 0o600
    assert client.get("/api/v1/me", headers=bearer(replacement)).status_code == 200


def test_bootstrap_command_prints_the_key(tmp_path, retire_keys):
    env = {**os.environ, "HERALD_LOCAL_DIR": str(tmp_path)}
    run = [sys.executable, "-m", "api.keys", "bootstrap"]

    first = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True)
    second = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True)
    retire_keys(first.stdout.strip())

    assert first.stdout.strip().startswith("hk_")
    assert first.stdout == second.stdout
    assert (tmp_path / "admin.key").read_text() == first.stdout

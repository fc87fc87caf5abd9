"""API keys: issue, list and revoke them (admins), and ``/me`` for any key.

The plaintext of a key exists only in the response that issues it (and, for
the first admin key, in ``.local/admin.key``); afterwards Herald knows its
prefix and digest. Every change is written to the audit log in the same
transaction.

    python -m api.keys bootstrap    # print an admin key, creating one if needed
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import datetime

import asyncpg
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import ROLES, Caller, Role, digest_matches, generate_key, key_digest, key_prefix, require_role
from api.errors import ApiError, parse_body
from api.openapi import operation
from config import Settings, get_settings
from schemas.encoding import BIGINT_MAX
from pipeline import audit

BOOTSTRAP_KEY_NAME = "bootstrap admin"
_COLUMNS = "key_id, name, role, prefix, created_by, created_at, last_used_at, revoked_at"


class NewApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, description="Who or what uses the key")
    role: Role


class ApiKey(BaseModel):
    """A key as listings show it: never the secret, only the prefix that identifies it."""

    key_id: int
    name: str
    role: Role
    prefix: str
    created_by: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class IssuedApiKey(ApiKey):
    key: str = Field(description="The plaintext key; shown in this response only")


class ApiKeyList(BaseModel):
    api_keys: list[ApiKey]


class Me(BaseModel):
    key_id: int
    name: str
    role: Role


async def issue_key(conn: asyncpg.Connection, name: str, role: str, actor: Caller | None) -> IssuedApiKey:
    """Create a key and its audit row on ``conn``, inside the caller's transaction."""
    for _ in range(5):
        issued = generate_key()
        try:
            async with conn.transaction():  # a savepoint: a prefix collision only retries
                row = await conn.fetchrow(
                    "INSERT INTO api_keys (name, role, prefix, key_hash, created_by)"
                    f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
                    name,
                    role,
                    issued.prefix,
                    issued.digest,
                    actor.key_id if actor else None,
                )
            break
        except asyncpg.UniqueViolationError:
            continue
    else:
        raise RuntimeError("five generated key prefixes in a row were taken")
    key = ApiKey(**row)
    await audit.record(conn, actor, "api_key.created", "api_key", key.key_id, None, key.model_dump(mode="json"))
    return IssuedApiKey(**key.model_dump(), key=issued.key)


@require_role("admin")
@operation("Issue an API key", body=NewApiKey, responses={201: IssuedApiKey})
async def create_api_key(request: Request) -> Response:
    """Gives a person or system its own key and role, so access can be revoked one key at a time.

    The plaintext is in this response only; store it now.
    """
    new = await parse_body(request, NewApiKey)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        issued = await issue_key(conn, new.name, new.role, request.state.caller)
    return JSONResponse(issued.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"})


@require_role("admin")
@operation("List API keys", responses={200: ApiKeyList})
async def list_api_keys(request: Request) -> Response:
    """Every key, revoked ones included, so an admin can see who still has access and who used it last."""
    rows = await request.app.state.postgres.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY key_id")
    return JSONResponse(ApiKeyList(api_keys=[ApiKey(**r) for r in rows]).model_dump(mode="json"))


@require_role("admin")
@operation("Revoke an API key", responses={200: ApiKey})
async def revoke_api_key(request: Request) -> Response:
    """Ends a key's access (within the key cache window in other API processes); revoking twice is harmless."""
    key_id = request.path_params["key_id"]
    if key_id > BIGINT_MAX:
        raise ApiError(404, "not_found", f"no API key {key_id}")
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = $1 FOR UPDATE", key_id)
        if before is None:
            raise ApiError(404, "not_found", f"no API key {key_id}")
        after = before
        if before["revoked_at"] is None:
            after = await conn.fetchrow(
                f"UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 RETURNING {_COLUMNS}", key_id
            )
            await audit.record(
                conn,
                request.state.caller,
                "api_key.revoked",
                "api_key",
                key_id,
                ApiKey(**before).model_dump(mode="json"),
                ApiKey(**after).model_dump(mode="json"),
            )
    request.app.state.key_cache.forget(key_id)
    return JSONResponse(ApiKey(**after).model_dump(mode="json"))


@require_role(*ROLES)
@operation("The caller's own key", responses={200: Me})
async def who_am_i(request: Request) -> Response:
    """Lets a client check its key and learn its role before it tries anything else."""
    caller: Caller = request.state.caller
    return JSONResponse(Me(key_id=caller.key_id, name=caller.name, role=caller.role).model_dump())


routes = [
    Route("/api/v1/api-keys", create_api_key, methods=["POST"]),
    Route("/api/v1/api-keys", list_api_keys, methods=["GET"]),
    Route("/api/v1/api-keys/{key_id:int}", revoke_api_key, methods=["DELETE"]),
    Route("/api/v1/me", who_am_i, methods=["GET"]),
]


async def _usable_admin_key(conn: asyncpg.Connection, key: str) -> bool:
    prefix = key_prefix(key)
    if prefix is None:
        return False
    row = await conn.fetchrow("SELECT role, key_hash, revoked_at FROM api_keys WHERE prefix = $1", prefix)
    return (
        row is not None
        and digest_matches(row["key_hash"], key_digest(key))
        and row["revoked_at"] is None
        and row["role"] == "admin"
    )


def _write_private(path: os.PathLike[str], text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        file.write(text)


async def bootstrap_admin_key(settings: Settings) -> str:
    """The admin key in ``settings.admin_key_file``, or a new one written there if it is missing or revoked.

    This is how the first admin gets in: nobody can call ``POST /api-keys``
    before some admin key exists.
    """
    path = settings.admin_key_file
    stored = path.read_text().strip() if path.exists() else ""
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        if stored and await _usable_admin_key(conn, stored):
            return stored
        async with conn.transaction():
            issued = await issue_key(conn, BOOTSTRAP_KEY_NAME, "admin", actor=None)
    finally:
        await conn.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, issued.key + "\n")
    return issued.key


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description="Herald API keys")
    parser.add_argument("command", choices=["bootstrap"], help="print an admin key, creating one if needed")
    parser.parse_args()
    print(asyncio.run(bootstrap_admin_key(get_settings())))


if __name__ == "__main__":
    main()

"""GDPR: erase a person everywhere (Art. 17), follow the erasure, export what Herald holds (Art. 15, 20).

    DELETE /api/v1/users/{id}          admin   202 {"erasure_id", "user_id", "stores": {store: state}, "done"}
    GET    /api/v1/erasures/{id}       admin   the same, as it stands now
    GET    /api/v1/users/{id}/export   admin   everything Herald holds about the person, as JSON; 404 if none

The erasure is recorded and the PostgreSQL rows are gone before the answer (one transaction with
its audit row); Cassandra, Redis and the topic tombstones follow within the request, each reported
as "done" or "failed: <why>" on the erasure row; the Faust tables are erased by the worker owning the
user's partition (agents/erase_state.py), so an erasure is done only once that worker has reported.
pipeline/erase.py holds the whole design. Both erasing and exporting are audited.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import require_role
from api.errors import ApiError, FieldProblem, user_id_path
from api.openapi import operation
from pipeline import audit
from pipeline import erase as decide
from pipeline import erase_io
from pipeline.signing import signing_key


class Erasure(BaseModel):
    erasure_id: str
    user_id: int
    requested_at: str
    stores: dict[str, str] = Field(description="each store: pending, done, or failed: <why>")
    done: bool
    done_at: str | None


class UserExport(BaseModel):
    user_id: int
    exported_at: str
    profile: dict[str, Any]
    preferences: dict[str, Any] | None
    segments: list[dict[str, Any]]
    unsubscribes: list[dict[str, Any]]
    events: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    last_messages: dict[str, str]
    inbox: list[Any]
    journeys: dict[str, Any] = Field(description="Flow id (j<journey> or c<triggered campaign>) → the person's place")
    audit: list[dict[str, Any]]


def _key(request: Request) -> bytes:
    return decide.marker_key(signing_key(request.app.state.settings))


def _erasure_body(row) -> dict[str, Any]:
    stores = orjson.loads(row["stores"]) if isinstance(row["stores"], str) else dict(row["stores"])
    return {"erasure_id": str(row["erasure_id"]), "user_id": row["user_id"],
            "requested_at": row["requested_at"].isoformat(), "stores": stores, "done": row["done_at"] is not None,
            "done_at": row["done_at"].isoformat() if row["done_at"] else None}


async def _step(request: Request, erasure_id: uuid.UUID, store: str, work) -> None:
    """Run one store's erasure and record its outcome; a failure is reported, not raised (the other stores
    still go, and the row says what to retry)."""
    try:
        await work
    except Exception as exc:  # noqa: BLE001 - any store error is the store's state, shown to the caller
        await erase_io.report(request.app.state.postgres, erasure_id, {store: f"failed: {exc.__class__.__name__}"})
    else:
        await erase_io.report(request.app.state.postgres, erasure_id, {store: decide.DONE})


@require_role("admin")
@operation("Erase a person everywhere (GDPR Art. 17)", responses={202: Erasure})
async def erase_user(request: Request) -> Response:
    """Erase the user from every store; answers with the erasure to follow at /api/v1/erasures/{id}.

    A profile or event of the user arriving later is dropped unless it is a new sign-up (a profile
    created after the erasure). The user's messages still queued are refused by the gate (reason erased).
    """
    user_id = user_id_path(request)
    state = request.app.state
    keyspace = state.settings.cassandra_keyspace
    erasure_id = await erase_io.erase_postgres(state.postgres, _key(request), state.pii, user_id,
                                              request.state.caller)
    await erase_io.report(state.postgres, erasure_id, {"postgres": decide.DONE})
    await _step(request, erasure_id, "kafka_topics", erase_io.publish_tombstones(state.kafka, erasure_id, user_id))
    await _step(request, erasure_id, "cassandra_events", erase_io.erase_events(state.cassandra, keyspace, user_id))
    await _step(request, erasure_id, "cassandra_messages", erase_io.erase_messages(state.cassandra, keyspace, user_id))
    flows = await erase_io.flows(state.postgres)
    await _step(request, erasure_id, "redis", erase_io.erase_redis(state.redis, flows, user_id))
    row = await erase_io.erasure(state.postgres, erasure_id)
    return JSONResponse(_erasure_body(row), status_code=202)


@require_role("admin")
@operation("An erasure's progress, store by store", responses={200: Erasure})
async def get_erasure(request: Request) -> Response:
    """Each store's state (pending, done, failed: why); done once every store is."""
    raw = request.path_params["erasure_id"]
    try:
        erasure_id = uuid.UUID(raw)
    except ValueError:
        raise ApiError(422, "validation_error", "the erasure id is not a UUID",
                       fields=[FieldProblem(field="erasure_id", reason="a UUID, as DELETE /api/v1/users/{id} gave it")]
                       ) from None
    row = await erase_io.erasure(request.app.state.postgres, erasure_id)
    if row is None:
        raise ApiError(404, "not_found", "no such erasure")
    return JSONResponse(_erasure_body(row))


@require_role("admin")
@operation("Everything Herald holds about a person (GDPR Art. 15, 20)", responses={200: UserExport})
async def export_user(request: Request) -> Response:
    """Profile, preferences and consent, events, messages, segments, unsubscribes, inbox, journeys and audit entries."""
    user_id = user_id_path(request)
    state = request.app.state
    journeys = await erase_io.journey_state(state.settings.kafka_brokers, user_id)
    export = await erase_io.export_user(state.postgres, state.pii, state.cassandra,
                                        state.settings.cassandra_keyspace, state.redis, user_id, journeys=journeys)
    if export is None:
        raise ApiError(404, "not_found", "no such user")
    async with state.postgres.acquire() as conn:
        await audit.record(conn, request.state.caller, "export", "user", user_id, None,
                           {"sections": sorted(k for k, v in export.items() if v)})
    return Response(orjson.dumps(export, default=str), media_type="application/json")


routes = [
    Route("/api/v1/users/{user_id:int}", erase_user, methods=["DELETE"]),
    Route("/api/v1/users/{user_id:int}/export", export_user, methods=["GET"]),
    Route("/api/v1/erasures/{erasure_id}", get_erasure, methods=["GET"]),
]

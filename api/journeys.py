"""Journeys: author, publish and stop them over ``/api/v1/journeys``, and watch their progress.

    POST   /api/v1/journeys                  admin, marketer   201 the draft, validated
    GET    /api/v1/journeys?status=&cursor=  any role          newest first, a page at a time
    GET    /api/v1/journeys/{id}             any role          ETag: the version
    PUT    /api/v1/journeys/{id}             admin, marketer   replace the draft (If-Match honoured)
    DELETE /api/v1/journeys/{id}             admin, marketer   only one never published, else 409
    POST   /api/v1/journeys/{id}/publish     admin, marketer   the draft becomes the next live version
    POST   /api/v1/journeys/{id}/stop        admin, marketer   nobody enters; users inside leave
    GET    /api/v1/journeys/{id}/versions    any role          published versions and their campaigns
    GET    /api/v1/journeys/{id}/progress    any role          users per node, exits, message counts

A journey is a flat list of typed nodes (``pipeline.journeys.model`` parses it: every problem is a
422 naming the node); the PostgreSQL work is ``pipeline.journey_store``'s. Publishing and stopping
change what the workers run: once the change is committed, ``flows:changed`` is bumped in Redis and
the workers reload their flows (and every ``journey_reload_s`` anyway, should that bump be lost).

Versions: every change bumps ``version``; GET returns it as the ETag, and PUT, DELETE, publish and
stop honour ``If-Match`` (412 when it no longer matches). ``live_version`` is another number: the
published version new users enter.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

import asyncpg
import orjson
import structlog
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import paging
from api.auth import ROLES, require_role
from api.errors import ApiError, FieldProblem, read_json
from api.openapi import NO_BODY, PAGED, STR, operation
from pipeline import journey_store
from pipeline.journeys.model import DefinitionError, Journey
from schemas.encoding import BIGINT_MAX

log = structlog.get_logger("herald.api")

AUTHORS = ("admin", "marketer")
Status = Literal["draft", "live", "stopped"]
_DESCRIPTION_MAX = 10_000


# ---------------------------------------------------------------- models (the OpenAPI document's)


class JourneyDraft(BaseModel):
    """A journey as authored. Validated by ``pipeline.journeys.model.parse_journey`` (the whole graph,
    one 422 naming every problem's node); this model documents the shape."""

    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=_DESCRIPTION_MAX)
    goal: dict[str, Any] | None = Field(
        default=None, description="{event, where?, exit?}: reaching it exits the user (exit false: only noted)")
    nodes: list[dict[str, Any]] = Field(
        description="Typed nodes with ids: entry (an event rule or a dynamic segment), send {channel, template_id,"
        " variables?, variants?}, wait {duration | until_time | until_date}, wait_for_event, condition, split, exit;"
        " each names the node(s) it leads to")


class JourneyView(BaseModel):
    journey_id: int
    name: str
    description: str | None
    status: Status
    definition: dict[str, Any] = Field(description="The draft as last given")
    live_version: int | None = Field(description="The published version new users enter; null if never published")
    version: int = Field(description="Bumped by every change; the ETag")
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    stopped_at: datetime | None


class JourneyList(BaseModel):
    journeys: list[JourneyView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")


class Version(BaseModel):
    version: int
    published_at: datetime
    published_by: str | None
    step_campaigns: dict[str, int] = Field(description="Send node id → the campaign carrying its messages")


class PublishedJourney(JourneyView):
    step_campaigns: dict[str, int] = Field(description="The new version's send nodes and their campaigns")


class VersionList(BaseModel):
    versions: list[Version]


class NodeProgress(BaseModel):
    id: str
    type: str
    users: int = Field(description="Users at this node now")
    sent: int
    suppressed: int
    opened: int
    clicked: int


class Progress(BaseModel):
    journey_id: int
    status: Status
    live_version: int | None
    entered: int
    inside: int = Field(description="Users in the journey now, at any node of any version")
    conversions: int
    exited: dict[str, int] = Field(description="Users who left, by reason: goal, exit (the end), stopped")
    timed_out: int = Field(description="Waits for an event that ended without it")
    nodes: list[NodeProgress] = Field(description="The live (else newest) version's nodes, in definition order;"
                                      " message counts add up over every version")
    versions: list[Version]


# ---------------------------------------------------------------- helpers


def _answer(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_UTC_Z), status_code=status_code, headers=headers,
                    media_type="application/json")


def _invalid(problems: list[tuple[str, str]]) -> ApiError:
    names = ", ".join(dict.fromkeys(field for field, _ in problems))
    return ApiError(422, "validation_error", f"invalid value for {names}",
                    fields=[FieldProblem(field=f, reason=r) for f, r in problems])


def _etag(version: int) -> str:
    return f'"{version}"'


def _journey_id(request: Request) -> int:
    journey_id = request.path_params["journey_id"]
    if journey_id > BIGINT_MAX:
        raise ApiError(404, "not_found", f"no journey {journey_id}")
    return journey_id


async def _fetch(request: Request, conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record:
    journey_id = _journey_id(request)
    row = await conn.fetchrow("SELECT * FROM journeys WHERE journey_id = $1", journey_id)
    if row is None:
        raise ApiError(404, "not_found", f"no journey {journey_id}")
    return row


async def _locked(request: Request, conn: asyncpg.Connection) -> asyncpg.Record:
    """The journey row, locked for this transaction, at the version ``If-Match`` names (else 412)."""
    journey_id = _journey_id(request)
    row = await conn.fetchrow("SELECT * FROM journeys WHERE journey_id = $1 FOR UPDATE", journey_id)
    if row is None:
        raise ApiError(404, "not_found", f"no journey {journey_id}")
    wanted = request.headers.get("if-match")
    if wanted is not None and wanted.strip() != "*":
        tags = {t.strip().removeprefix("W/").strip('"') for t in wanted.split(",")}
        if str(row["version"]) not in tags:
            raise ApiError(412, "precondition_failed",
                           f"journey {journey_id} is at version {row['version']}, not {wanted}; reload and retry")
    return row


async def _draft(request: Request) -> Any:
    """The request's JSON body, checked by ``api.inputs`` but not yet against the journey model."""
    return await read_json(request)


def description_problems(raw: object) -> list[tuple[str, str]]:
    """The one top-level field the model takes without reading it."""
    value = raw.get("description") if isinstance(raw, dict) else None
    if value is not None and (not isinstance(value, str) or len(value) > _DESCRIPTION_MAX):
        return [("description", f"a text of at most {_DESCRIPTION_MAX} characters, or null")]
    return []


async def _validated(conn: asyncpg.Connection, raw: object) -> Journey:
    """The draft parsed against the stored templates and segments; every problem in one 422."""
    problems = description_problems(raw)
    try:
        journey = await journey_store.checked(conn, raw)
    except DefinitionError as exc:
        problems += exc.problems
    if problems:
        raise _invalid(problems)
    return journey


# ---------------------------------------------------------------- endpoints


@require_role(*AUTHORS)
@operation("Create a journey", body=JourneyDraft, responses={201: JourneyView})
async def create_journey(request: Request) -> Response:
    """Validates the whole graph (node types, channels, templates of the right channel, segments, references,
    reachability from the entry, loops without a wait) and stores it as a draft.

    Every problem is one entry of a 422's ``fields``: its path (``nodes.3.template_id``) and a reason that
    names the node.
    """
    raw = await _draft(request)
    async with request.app.state.postgres.acquire() as conn:
        journey = await _validated(conn, raw)
        async with conn.transaction():
            row = await journey_store.create(conn, raw, journey, request.state.caller)
    return _answer(journey_store.journey_view(row), status_code=201,
                   headers={"ETag": _etag(row["version"]), "Location": f"/api/v1/journeys/{row['journey_id']}"})


@require_role(*ROLES)
@operation("List journeys", responses={200: JourneyList}, query={"status": STR, **PAGED})
async def list_journeys(request: Request) -> Response:
    """Newest first, a page at a time (``limit`` ≤ 200, ``cursor``), optionally by ``status``."""
    q = request.query_params
    problems: list[tuple[str, str]] = []
    status = q.get("status")
    if status is not None and status not in journey_store.STATUSES:
        problems.append(("status", f"unknown status {status!r}; known: {', '.join(journey_store.STATUSES)}"))
    limit = paging.page_limit(q, problems)
    before = None
    if "cursor" in q:
        before = paging.decode_cursor("j1", q["cursor"])
        if before is None:
            problems.append(("cursor", "not a cursor this API returned"))
    if problems:
        raise _invalid(problems)
    rows = await request.app.state.postgres.fetch(
        "SELECT * FROM journeys WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR journey_id < $2)"
        " ORDER BY journey_id DESC LIMIT $3", status, before, limit + 1)
    page = rows[:limit]
    return _answer({
        "journeys": [journey_store.journey_view(r) for r in page],
        "next_cursor": paging.encode_cursor("j1", page[-1]["journey_id"]) if len(rows) > limit else None,
    })


@require_role(*ROLES)
@operation("Get a journey", responses={200: JourneyView})
async def get_journey(request: Request) -> Response:
    """The journey with its draft, status and live version; the ETag is its version."""
    row = await _fetch(request, request.app.state.postgres)
    return _answer(journey_store.journey_view(row), headers={"ETag": _etag(row["version"])})


@require_role(*AUTHORS)
@operation("Replace a journey's draft", body=JourneyDraft, responses={200: JourneyView})
async def replace_journey(request: Request) -> Response:
    """The draft is replaced whole and validated as on create; a live journey keeps running its live version
    until the next publish. Send ``If-Match`` with the ETag to refuse (412) a change based on an old version.
    """
    raw = await _draft(request)
    now = datetime.now(timezone.utc)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _locked(request, conn)
        journey = await _validated(conn, raw)
        after = await journey_store.replace(conn, row, raw, journey, request.state.caller, now)
    return _answer(journey_store.journey_view(after), headers={"ETag": _etag(after["version"])})


@require_role(*AUTHORS)
@operation("Delete a journey never published", responses={204: NO_BODY})
async def delete_journey(request: Request) -> Response:
    """Removes a draft; a journey that was published is stopped instead, and kept for its users and reports."""
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _locked(request, conn)
        if row["status"] != "draft":
            hint = "stop it instead (POST .../stop)" if row["status"] == "live" else "it is kept for reporting"
            raise ApiError(409, "not_deletable",
                           f"only journeys never published can be deleted; journey {row['journey_id']} is"
                           f" {row['status']}: {hint}",
                           fields=[FieldProblem(field="status", reason=f"is {row['status']}, must be draft")])
        await journey_store.delete(conn, row, request.state.caller)
    return Response(status_code=204)


@require_role(*AUTHORS)
@operation("Publish a journey", responses={200: PublishedJourney})
async def publish_journey(request: Request) -> Response:
    """The current draft becomes the next version, live: new users enter it, users inside finish on theirs.

    The draft is validated again (a template or segment it names may have gone). Each send node gets a campaign
    of type ``journey`` carrying its messages (caps, quiet hours, preferences and dedup apply as to any campaign).
    Publishing a stopped journey makes it live again; publishing an unchanged draft still makes a new version.
    """
    now = datetime.now(timezone.utc)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _locked(request, conn)
        journey = await _validated(conn, journey_store.journey_view(row)["definition"])
        try:
            after, published = await journey_store.publish(conn, request.app.state.redis, row, journey,
                                                           request.state.caller, now)
        except (RedisError, OSError) as exc:
            raise ApiError(503, "unavailable", f"could not set the step campaigns' status in Redis"
                           f" ({exc.__class__.__name__}); nothing changed, retry") from None
    await journey_store.tell_workers(request.app.state.redis, journey_id=after["journey_id"])
    steps = journey_store.version_view(published)["step_campaigns"]
    view = {**journey_store.journey_view(after), "step_campaigns": steps}
    return _answer(view, headers={"ETag": _etag(after["version"])})


@require_role(*AUTHORS)
@operation("Stop a journey", responses={200: JourneyView})
async def stop_journey(request: Request) -> Response:
    """Nobody enters any more and the users inside leave (their queued messages are not sent); publish again
    to make it live with a new version."""
    now = datetime.now(timezone.utc)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _locked(request, conn)
        if row["status"] != "live":
            why = "it was never published" if row["status"] == "draft" else "it is stopped already"
            raise ApiError(409, "illegal_transition", f"only a live journey can be stopped; journey"
                           f" {row['journey_id']} is {row['status']}: {why}",
                           fields=[FieldProblem(field="status", reason=f"is {row['status']}, must be live")])
        after = await journey_store.stop(conn, row, request.state.caller, now, request.app.state.redis)
    await journey_store.tell_workers(request.app.state.redis, journey_id=after["journey_id"])
    return _answer(journey_store.journey_view(after), headers={"ETag": _etag(after["version"])})


@require_role(*ROLES)
@operation("List a journey's published versions", responses={200: VersionList})
async def list_versions(request: Request) -> Response:
    """Newest first, each with who published it and the campaign carrying each send node's messages."""
    pool = request.app.state.postgres
    row = await _fetch(request, pool)
    rows = await journey_store.versions(pool, row["journey_id"])
    return _answer({"versions": [journey_store.version_view(v) for v in rows]})


@require_role(*ROLES)
@operation("A journey's progress", responses={200: Progress})
async def journey_progress(request: Request) -> Response:
    """Users who entered, are inside (per node), converted, left (by reason) or timed out, as the journey workers
    count them, and each send node's messages sent, suppressed, opened and clicked over every version."""
    pool = request.app.state.postgres
    row = await _fetch(request, pool)
    return _answer(await journey_store.progress(pool, request.app.state.redis, row))


routes = [
    Route("/api/v1/journeys", create_journey, methods=["POST"]),
    Route("/api/v1/journeys", list_journeys, methods=["GET"]),
    Route("/api/v1/journeys/{journey_id:int}", get_journey, methods=["GET"]),
    Route("/api/v1/journeys/{journey_id:int}", replace_journey, methods=["PUT"]),
    Route("/api/v1/journeys/{journey_id:int}", delete_journey, methods=["DELETE"]),
    Route("/api/v1/journeys/{journey_id:int}/publish", publish_journey, methods=["POST"]),
    Route("/api/v1/journeys/{journey_id:int}/stop", stop_journey, methods=["POST"]),
    Route("/api/v1/journeys/{journey_id:int}/versions", list_versions, methods=["GET"]),
    Route("/api/v1/journeys/{journey_id:int}/progress", journey_progress, methods=["GET"]),
]

"""Segments: who a campaign reaches, defined once and reused.

A segment is a set of criteria in the DSL of ``pipeline.segments`` and one of three kinds:

    dynamic    only the criteria are stored; every read and every launch evaluates them
               against the live audience store, so new profiles and events count within seconds
    static     the members are frozen into ``segment_members`` when the segment is created
    lookalike  a static segment whose members a model ranked as most like a seed segment
               (``pipeline.lookalike``), stored with the model's quality figures

``exclude_segments`` subtracts other segments. Exclusions are resolved here,
transitively, into what the store needs (``load_exclusions``): a dynamic
segment as its criteria, a static one as its member ids. A chain that comes
back to where it started would never settle, so it is refused.

``segment_members`` references ``users``: a snapshot stores the members that
PostgreSQL knows. The audience store and PostgreSQL's ``users`` are both fed
from the ``user-profiles`` topic, so the two differ only by ingestion lag
(a profile the store has applied but the ingest has not yet written); such
users are left out of the snapshot and ``size`` counts what was stored.
"""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import datetime, timezone
from typing import Any, Literal

import asyncpg
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import ROLES, require_role
from api.errors import ApiError, FieldProblem, parse_body
from api.inputs import ascii_int
from api.openapi import PAGED, operation
from pipeline import audit
from pipeline.launch_audience import ExclusionError
from pipeline.launch_audience import load_exclusions as resolve_exclusions
from pipeline.lookalike import LookalikeError, train_and_rank
from pipeline.segments import AudienceStore, Criteria, CriteriaError, Exclusions, parse_criteria, unseen_fields
from pipeline.segments.members import member_ids
from schemas.encoding import BIGINT_MAX, to_json

EDITORS = ("admin", "marketer")
MAX_PAGE = 200
_COLUMNS = (
    "segment_id, name, description, kind, dynamic, criteria, size, last_computed_at,"
    " created_at, source_segment_id, quality"
)
_FINAL_CAMPAIGN_STATUSES = ["completed", "cancelled"]

Kind = Literal["static", "dynamic", "lookalike"]


class NewSegment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=10_000)
    criteria: dict[str, Any] = Field(
        description='{"conditions": [...], "logic": "AND"|"OR", "exclude_segments": [ids]}'
    )
    dynamic: bool = Field(
        default=False, description="true: evaluated live; false: members frozen now into the segment"
    )


class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    criteria: dict[str, Any]


class LookalikeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=1, le=10_000_000, description="How many users the new segment should hold")
    name: str | None = Field(default=None, min_length=1, max_length=255)


class Segment(BaseModel):
    segment_id: int
    name: str
    description: str | None
    kind: Kind
    dynamic: bool
    criteria: dict[str, Any]
    size: int = Field(description="dynamic: counted live now; static and lookalike: members stored")
    last_updated: datetime | None
    created_at: datetime
    source_segment_id: int | None = Field(description="the seed of a lookalike segment")
    quality: dict[str, Any] | None = Field(description="a lookalike model's quality (pipeline.lookalike)")


_WARNINGS = Field(
    default_factory=list,
    description="conditions on an attribute or event no user has yet: accepted, matched by nobody until it arrives",
)


class CreatedSegment(Segment):
    estimated_size: int
    warnings: list[FieldProblem] = _WARNINGS


class SegmentList(BaseModel):
    segments: list[Segment] = Field(description="newest first; sizes as last computed")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class Estimate(BaseModel):
    estimated_size: int
    computation_time_ms: float
    warnings: list[FieldProblem] = _WARNINGS


# ---------------------------------------------------------------- shared with the campaigns API


def _state(holder: Any) -> Any:
    """``app.state`` from a Request, an app or the state itself."""
    if hasattr(holder, "app"):
        return holder.app.state
    return holder.state if hasattr(holder, "state") and hasattr(holder, "routes") else holder


def audience_store(holder: Any) -> AudienceStore:
    store = getattr(_state(holder), "audience", None)
    if store is None:
        raise ApiError(503, "unavailable", "the audience store is not open in this API process")
    return store


def _criteria_field(path: str) -> str:
    return path if path == "criteria" or path.startswith("criteria.") else f"criteria.{path}".rstrip(".")


def parse_or_422(data: object, store: AudienceStore) -> Criteria:
    """``data`` as Criteria, or a 422 naming each field that is wrong (``store`` knows which fields exist)."""
    try:
        return parse_criteria(data, store)
    except CriteriaError as exc:
        fields = [FieldProblem(field=_criteria_field(path), reason=reason) for path, reason in exc.problems]
        names = ", ".join(dict.fromkeys(f.field for f in fields)) or "criteria"
        raise ApiError(422, "validation_error", f"invalid segment criteria: {names}", fields=fields) from None


def criteria_warnings(criteria: Criteria, store: AudienceStore) -> list[FieldProblem]:
    """A warning for each condition on an attribute or event the store has not seen on any user yet."""
    return [FieldProblem(field=_criteria_field(path), reason=reason) for path, reason in unseen_fields(criteria, store)]


def _invalid_param(field: str, reason: str) -> ApiError:
    return ApiError(422, "validation_error", f"invalid {field}: {reason}", [FieldProblem(field=field, reason=reason)])


def _exclusion_error(reason: str) -> ApiError:
    return _invalid_param("criteria.exclude_segments", reason)


async def load_exclusions(
    conn: asyncpg.Connection, criteria: Criteria, segment_id: int | None = None
) -> Exclusions:
    """``pipeline.launch_audience.load_exclusions``; a missing segment or a cycle is a 422 naming
    ``criteria.exclude_segments``."""
    try:
        return await resolve_exclusions(conn, criteria, segment_id)
    except ExclusionError as exc:
        raise _exclusion_error(str(exc)) from None


async def segment_audience_size(holder: Any, conn: asyncpg.Connection, segment_id: int) -> int:
    """How many users a launch would reach through this segment now (before consent and caps).

    Dynamic: counted live in the audience store; static and lookalike: the
    stored members. 404 if there is no such segment. The row is read FOR SHARE: a
    campaign saved in the caller's transaction cannot target a segment that a
    concurrent DELETE is removing.
    """
    row = await _fetch_segment(conn, segment_id, "FOR SHARE")
    if row["kind"] != "dynamic":
        return int(row["size"])
    store = audience_store(holder)
    criteria = parse_or_422(orjson.loads(row["criteria"]), store)
    exclusions = await load_exclusions(conn, criteria, segment_id)
    return store.estimate(criteria, exclusions)


# ---------------------------------------------------------------- storage


async def _fetch_segment(conn: asyncpg.Connection, segment_id: int, lock: str = "") -> asyncpg.Record:
    row = None
    if segment_id <= BIGINT_MAX:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM segments WHERE segment_id = $1 {lock}", segment_id)
    if row is None:
        raise ApiError(404, "not_found", f"no segment {segment_id}")
    return row


async def store_members(
    conn: asyncpg.Connection, segment_id: int, ranked_ids: np.ndarray, limit: int | None = None
) -> int:
    """Write ``segment_members`` by COPY; return how many were stored.

    Ids go to a temporary table with their rank, then only those PostgreSQL's
    ``users`` holds are inserted (the foreign key), the first ``limit`` by rank.
    """
    await conn.execute("CREATE TEMP TABLE segment_snapshot (rank bigint, user_id bigint) ON COMMIT DROP")
    await conn.copy_records_to_table(
        "segment_snapshot", records=enumerate(ranked_ids.tolist()), columns=["rank", "user_id"]
    )
    status = await conn.execute(
        "INSERT INTO segment_members (segment_id, user_id)"
        " SELECT $1, s.user_id FROM segment_snapshot s JOIN users u ON u.user_id = s.user_id"
        " ORDER BY s.rank LIMIT $2",
        segment_id,
        limit,
    )
    await conn.execute("DROP TABLE segment_snapshot")
    return int(status.rsplit(" ", 1)[1])


async def _insert_segment(conn: asyncpg.Connection, **values: Any) -> asyncpg.Record:
    names = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    return await conn.fetchrow(
        f"INSERT INTO segments ({', '.join(names)}, last_computed_at) VALUES ({placeholders}, now())"
        f" RETURNING {_COLUMNS}",
        *values.values(),
    )


def _segment(row: asyncpg.Record, size: int | None = None, last_updated: datetime | None = None) -> Segment:
    return Segment(
        segment_id=row["segment_id"],
        name=row["name"],
        description=row["description"],
        kind=row["kind"],
        dynamic=row["dynamic"],
        criteria=orjson.loads(row["criteria"]),
        size=row["size"] if size is None else size,
        last_updated=last_updated or row["last_computed_at"],
        created_at=row["created_at"],
        source_segment_id=row["source_segment_id"],
        quality=None if row["quality"] is None else orjson.loads(row["quality"]),
    )


async def _audit_created(conn: asyncpg.Connection, request: Request, created: Segment) -> None:
    after = created.model_dump(mode="json")
    await audit.record(conn, request.state.caller, "segment.created", "segment", created.segment_id, None, after)


# ---------------------------------------------------------------- cursors


def _cursor(segment_id: int) -> str:
    return base64.urlsafe_b64encode(f"s{segment_id}".encode()).decode().rstrip("=")


def _after(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        after = ascii_int(text[1:]) if text[:1] == "s" else None
        if after is not None:
            return after
    except ValueError:
        pass
    raise _invalid_param("cursor", "not a cursor this API issued")


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    limit = ascii_int(raw)
    if limit is None or not 1 <= limit <= MAX_PAGE:
        raise _invalid_param("limit", f"an integer from 1 to {MAX_PAGE}")
    return limit


# ---------------------------------------------------------------- endpoints


@require_role(*EDITORS)
@operation("Create a segment", body=NewSegment, responses={201: CreatedSegment})
async def create_segment(request: Request) -> Response:
    """Defines an audience once, for campaigns to target: dynamic (live) or static (members frozen now).

    The criteria are validated (an unknown operator or a malformed value is a
    422 naming it), excluded segments must exist and must not exclude each
    other in a cycle. A condition on an attribute or event no user has yet is
    accepted with a ``warnings`` entry naming it: nobody matches it until
    upstream systems send it. A static segment's members are copied into
    ``segment_members``.
    """
    new = await parse_body(request, NewSegment)
    store = audience_store(request)
    criteria = parse_or_422(new.criteria, store)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        exclusions = await load_exclusions(conn, criteria)
        kind = "dynamic" if new.dynamic else "static"
        common = dict(name=new.name, description=new.description, criteria=to_json(criteria.to_json()))
        common |= dict(kind=kind, dynamic=new.dynamic, created_by=request.state.caller.key_id)
        if new.dynamic:
            estimated = store.estimate(criteria, exclusions)
            row = await _insert_segment(conn, size=estimated, **common)
        else:
            members = store.members(criteria, exclusions)
            row = await _insert_segment(conn, size=0, **common)
            estimated = await store_members(conn, row["segment_id"], members)
            row = await conn.fetchrow(
                f"UPDATE segments SET size = $2 WHERE segment_id = $1 RETURNING {_COLUMNS}",
                row["segment_id"],
                estimated,
            )
        created = CreatedSegment(**_segment(row).model_dump(), estimated_size=estimated,
                                 warnings=criteria_warnings(criteria, store))
        await _audit_created(conn, request, created)
    return JSONResponse(created.model_dump(mode="json"), status_code=201)


@require_role(*ROLES)
@operation("List segments", responses={200: SegmentList}, query=PAGED)
async def list_segments(request: Request) -> Response:
    """Every segment, newest first, a page at a time (``?limit=`` up to 200, ``?cursor=`` from the last page).

    Sizes are as last computed (a dynamic segment's live size is on its own page).
    """
    limit = _limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor")
    after = _after(cursor) if cursor else None
    rows = await request.app.state.postgres.fetch(
        f"SELECT {_COLUMNS} FROM segments WHERE ($1::bigint IS NULL OR segment_id < $1)"
        " ORDER BY segment_id DESC LIMIT $2",
        after,
        limit + 1,
    )
    page = rows[:limit]
    next_cursor = _cursor(page[-1]["segment_id"]) if len(rows) > limit else None
    listing = SegmentList(segments=[_segment(r) for r in page], next_cursor=next_cursor)
    return JSONResponse(listing.model_dump(mode="json"))


@require_role(*ROLES)
@operation("Get a segment", responses={200: Segment})
async def get_segment(request: Request) -> Response:
    """A segment with its size now: a dynamic one counted live in the audience store, a static one as stored."""
    segment_id = request.path_params["segment_id"]
    async with request.app.state.postgres.acquire() as conn:
        row = await _fetch_segment(conn, segment_id)
        if row["kind"] != "dynamic":
            return JSONResponse(_segment(row).model_dump(mode="json"))
        store = audience_store(request)
        criteria = parse_or_422(orjson.loads(row["criteria"]), store)
        exclusions = await load_exclusions(conn, criteria, segment_id)
    size = store.estimate(criteria, exclusions)
    segment = _segment(row, size=size, last_updated=store.updated_at or datetime.now(timezone.utc))
    return JSONResponse(segment.model_dump(mode="json"))


@require_role(*EDITORS)
@operation("Delete a segment", responses={200: Segment})
async def delete_segment(request: Request) -> Response:
    """Removes a segment and its stored members (answering with what was deleted); 409 while something uses it.

    A campaign that is not completed or cancelled still needs its audience, and
    a segment that excludes this one could no longer be evaluated.
    """
    segment_id = request.path_params["segment_id"]
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _fetch_segment(conn, segment_id, lock="FOR UPDATE")
        campaigns = await conn.fetch(
            "SELECT campaign_id, status FROM campaigns WHERE segment_id = $1 AND NOT (status = ANY($2::text[]))"
            " ORDER BY campaign_id LIMIT 10",
            segment_id,
            _FINAL_CAMPAIGN_STATUSES,
        )
        if campaigns:
            used = ", ".join(f"{c['campaign_id']} ({c['status']})" for c in campaigns)
            raise ApiError(409, "conflict", f"segment {segment_id} is the audience of campaign {used}")
        excluders = await conn.fetch(
            "SELECT segment_id FROM segments WHERE criteria @> $1::jsonb ORDER BY segment_id LIMIT 10",
            to_json({"exclude_segments": [segment_id]}),
        )
        if excluders:
            ids = ", ".join(str(r["segment_id"]) for r in excluders)
            raise ApiError(409, "conflict", f"segment {segment_id} is excluded by segment {ids}")
        await conn.execute("DELETE FROM segments WHERE segment_id = $1", segment_id)
        deleted = _segment(row)
        await audit.record(
            conn, request.state.caller, "segment.deleted", "segment", segment_id, deleted.model_dump(mode="json"), None
        )
    return JSONResponse(deleted.model_dump(mode="json"))


@require_role(*ROLES)
@operation("Estimate a segment's size", body=EstimateRequest, responses={200: Estimate})
async def estimate_segment(request: Request) -> Response:
    """How many users criteria select right now, without saving anything: for building a segment interactively.

    ``computation_time_ms`` covers resolving exclusions and counting; ``warnings``
    names conditions on attributes or events no user has yet.
    """
    body = await parse_body(request, EstimateRequest)
    store = audience_store(request)
    criteria = parse_or_422(body.criteria, store)
    started = time.perf_counter()
    exclusions: Exclusions = {}
    if criteria.exclude_segments:
        async with request.app.state.postgres.acquire() as conn:
            exclusions = await load_exclusions(conn, criteria)
    size = store.estimate(criteria, exclusions)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    warnings = criteria_warnings(criteria, store)
    estimate = Estimate(estimated_size=size, computation_time_ms=elapsed_ms, warnings=warnings)
    return JSONResponse(estimate.model_dump())


@require_role(*EDITORS)
@operation("Create a lookalike segment", body=LookalikeRequest, responses={201: Segment})
async def create_lookalike(request: Request) -> Response:
    """A new static segment of the ``size`` non-members most like this segment's members, with the model's quality.

    A model (``pipeline.lookalike``) learns the seed from the audience store's
    attributes and event aggregates; ``quality`` reports how well it found
    seed members it was not shown (recall at ``size``, lift over random, AUC).
    """
    segment_id = request.path_params["segment_id"]
    body = await parse_body(request, LookalikeRequest)
    store = audience_store(request)
    pool = request.app.state.postgres
    async with pool.acquire() as conn:
        seed = await _fetch_segment(conn, segment_id)
        if seed["kind"] == "dynamic":
            criteria = parse_or_422(orjson.loads(seed["criteria"]), store)
            seed_ids = store.members(criteria, await load_exclusions(conn, criteria, segment_id))
        else:
            seed_ids = await member_ids(conn, segment_id)
    frame = store.frame()
    # A margin beyond `size`: users the store knows but PostgreSQL has not ingested yet are skipped.
    spare = max(body.size // 10, 100)
    now = datetime.now(timezone.utc)
    try:
        result = await asyncio.to_thread(train_and_rank, frame, seed_ids, body.size, now, spare)
    except LookalikeError as exc:
        raise ApiError(
            422, "validation_error", f"segment {segment_id} cannot seed a lookalike: {exc}",
            [FieldProblem(field="segment_id", reason=str(exc))],
        ) from None
    async with pool.acquire() as conn, conn.transaction():
        await _fetch_segment(conn, segment_id, lock="FOR SHARE")  # the seed must still exist
        row = await _insert_segment(
            conn,
            name=body.name or f"Lookalike of {seed['name']}"[:255],
            description=f"The {body.size} users most like the members of segment {segment_id}",
            criteria=to_json({"lookalike": {"seed_segment_id": segment_id, "size": body.size}}),
            kind="lookalike",
            dynamic=False,
            size=0,
            source_segment_id=segment_id,
            quality=to_json(result.quality),
            created_by=request.state.caller.key_id,
        )
        stored = await store_members(conn, row["segment_id"], result.user_ids, limit=body.size)
        row = await conn.fetchrow(
            f"UPDATE segments SET size = $2 WHERE segment_id = $1 RETURNING {_COLUMNS}", row["segment_id"], stored
        )
        created = _segment(row)
        await _audit_created(conn, request, created)
    return JSONResponse(created.model_dump(mode="json"), status_code=201)


routes = [
    Route("/api/v1/segments", create_segment, methods=["POST"]),
    Route("/api/v1/segments", list_segments, methods=["GET"]),
    Route("/api/v1/segments/estimate", estimate_segment, methods=["POST"]),
    Route("/api/v1/segments/{segment_id:int}", get_segment, methods=["GET"]),
    Route("/api/v1/segments/{segment_id:int}", delete_segment, methods=["DELETE"]),
    Route("/api/v1/segments/{segment_id:int}/lookalike", create_lookalike, methods=["POST"]),
]

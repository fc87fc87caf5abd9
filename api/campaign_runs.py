"""A scheduled or recurring campaign's runs: ``GET /api/v1/campaigns/{id}/runs``.

One row per occurrence (``campaign_runs``, written by the scheduler, ``pipeline/schedule_io.py``):
when it was due, what became of it (fired, published, completed, skipped, cancelled), its launch,
audience and counts. A completed run's counts are the campaign's counters' delta over the run; the
run that is sending now shows its live delta. Newest occurrence first, keyset-paged (``api.paging``).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import orjson
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import paging
from api.auth import ROLES, require_role
from api.errors import ApiError, FieldProblem
from api.openapi import PAGED, operation
from pipeline.schedule import OPEN_RUN_STATES
from pipeline.schedule_io import live_run_counts
from schemas.encoding import BIGINT_MAX, from_json

_CURSOR = "r1"


class RunCounts(BaseModel):
    sent: int = 0
    delivered: int = 0
    suppressed: int = 0
    failed: int = 0
    bounced: int = 0
    cancelled: int = 0
    expired: int = 0
    opened: int = 0
    clicked: int = 0
    accounted: int = Field(default=0, description="Messages with an outcome (sent, failed, suppressed, ...)")


class CampaignRun(BaseModel):
    run_id: int
    occurrence: datetime = Field(description="The instant the run was due (UTC)")
    state: str = Field(description="fired, published (sending), completed, skipped or cancelled")
    reason: str | None = Field(description="Why a run was skipped: missed, paused, previous run still sending, ...")
    launch_id: uuid.UUID | None
    fired_at: datetime | None
    published_at: datetime | None
    completed_at: datetime | None
    audience_size: int | None
    counts: RunCounts


class RunList(BaseModel):
    runs: list[CampaignRun]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")


def _counts(raw: dict) -> dict:
    return {name: int(raw.get(name, 0)) for name in RunCounts.model_fields}


@require_role(*ROLES)
@operation("List a campaign's runs", responses={200: RunList}, query=PAGED)
async def list_runs(request: Request) -> Response:
    """Each occurrence of a scheduled or recurring campaign, newest first (``limit`` ≤ 200, ``cursor``).

    Completed runs carry their counts; the run sending now its live counts; skipped runs say why.
    """
    campaign_id = request.path_params["campaign_id"]
    problems: list[tuple[str, str]] = []
    limit = paging.page_limit(request.query_params, problems)
    before = None
    if "cursor" in request.query_params:
        before = paging.decode_cursor(_CURSOR, request.query_params["cursor"])
        if before is None:
            problems.append(("cursor", "not a cursor this API returned"))
    if problems:
        raise ApiError(422, "validation_error", f"invalid value for {', '.join(f for f, _ in problems)}",
                       fields=[FieldProblem(field=f, reason=r) for f, r in problems])
    pool = request.app.state.postgres
    campaign = None if campaign_id > BIGINT_MAX else await pool.fetchrow(
        "SELECT campaign_id, launch_id FROM campaigns WHERE campaign_id = $1", campaign_id)
    if campaign is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}")
    rows = await pool.fetch(
        "SELECT * FROM campaign_runs WHERE campaign_id = $1 AND ($2::bigint IS NULL OR run_id < $2)"
        " ORDER BY run_id DESC LIMIT $3", campaign_id, before, limit + 1)
    page = rows[:limit]
    runs = []
    for r in page:
        counts = from_json(r["counts"]) or {}
        if r["state"] in OPEN_RUN_STATES and r["launch_id"] == campaign["launch_id"]:
            counts = await live_run_counts(request.app.state.redis, campaign_id)
        runs.append({
            "run_id": r["run_id"], "occurrence": r["occurrence"], "state": r["state"], "reason": r["reason"],
            "launch_id": None if r["launch_id"] is None else str(r["launch_id"]), "fired_at": r["fired_at"],
            "published_at": r["published_at"], "completed_at": r["completed_at"],
            "audience_size": r["audience_size"], "counts": _counts(counts),
        })
    next_cursor = paging.encode_cursor(_CURSOR, page[-1]["run_id"]) if len(rows) > limit else None
    body = {"runs": runs, "next_cursor": next_cursor}
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


routes = [Route("/api/v1/campaigns/{campaign_id:int}/runs", list_runs, methods=["GET"])]

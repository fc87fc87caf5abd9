"""Campaigns: create, read, list, update, delete and launch them over ``/api/v1/campaigns``.

The rules (state machine, validation, cost) live in ``pipeline.campaigns``;
this module reads and writes PostgreSQL, asks the segment and template modules
what they know, and publishes to Kafka:

- launch publishes a ``CampaignLaunch`` to ``campaign-launches``;
- pause, resume, cancel and complete publish a ``CampaignControl`` to ``campaign-control``.

Order of effects for every status change: lock the row, write the change and
its audit row, await Kafka's acknowledgement (acks=all), then commit. If Kafka
fails the transaction rolls back and the client gets a 503, so a 200 means the
record is durable in Kafka and the status is committed. The one gap left
(Kafka acknowledged, then the commit failed) leaves a record whose
``launch_id`` is not the campaign's committed one; consumers can tell.

Versions: every change bumps ``version``; GET returns it as the ETag, and
PATCH, DELETE and launch honour ``If-Match`` (412 when it no longer matches).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import paging, segments
from api.auth import ROLES, Caller, require_role
from api.errors import ApiError, FieldProblem, parse_body
from api.openapi import NO_BODY, PAGED, STR, operation
from pipeline import audit, journey_store, launches
from pipeline import campaigns as campaign_rules
from pipeline import templates  # unresolved_variables and template_syntax_problems (campaign_rules.TemplateChecks)
from pipeline.money import money_json
from schemas.encoding import BIGINT_MAX, to_json
from schemas.keys import metrics_key

AUTHORS = ("admin", "marketer")
_METRICS = ("sent", "delivered", "bounced", "failed", "opened", "clicked", "converted", "unsubscribed",
            "queued", "deferred", "held", "cancelled", "suppressed", "expired")
_SUPPRESSED_PREFIX = b"suppressed:"
# Fields that shape what is sent, to whom and when: frozen once a campaign has started.
_DEFINITION_FIELDS = frozenset(
    {"type", "channels", "start_time", "end_time", "target_segment_id", "content", "budget", "ab_test",
     "schedule", "trigger", "goals", "delivery"}
)

# The types a campaign is created with, and 'journey': the campaigns publishing a journey makes, one per
# send node (api/journeys.py), which list, read and pause like any other.
LISTED_TYPES = (*campaign_rules.CAMPAIGN_TYPES, "journey")

Status = Literal["draft", "scheduled", "active", "paused", "completed", "cancelled"]


# ---------------------------------------------------------------- models


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str = Field(description="Five-field cron expression, e.g. '0 9 * * MON'")
    timezone: str = Field(default="UTC", description="IANA time zone the cron is read in")


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_spend: float
    currency: str


class Delivery(BaseModel):
    """Deliver at a wall-clock hour in each recipient's own time zone, counted from the launch (or the
    run): recipients whose hour is still to come get the message then, those whose hour is now at once;
    quiet hours still apply on top (pipeline/gate.py ``local_release``)."""

    model_config = ConfigDict(extra="forbid")
    local_time: str = Field(description="24-hour HH:MM on each recipient's own clock, e.g. '09:00'",
                            json_schema_extra={"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "examples": ["09:00"]})
    if_passed: str = Field(
        default="next_day", json_schema_extra={"enum": ["next_day", "skip"]},
        description="Recipients whose local_time had passed at launch: 'next_day' (default, as Braze sends"
        " users past the local time the next day) or 'skip' (suppressed with reason local_time_passed)",
    )
    timezone: str | None = Field(
        default=None,
        description="IANA zone for recipients without one of their own (a profile's time zone left at the"
        " default UTC); default the schedule's timezone, else UTC",
    )


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    weight: float


class AbTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    variants: list[Variant] = Field(default_factory=list)


class _Definition(BaseModel):
    """What create accepts and update may change."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=10_000)
    type: str = Field(default="immediate", description="immediate, scheduled, triggered or recurring")
    channels: list[str] = Field(description="email, sms, push, in_app, webhook")
    start_time: datetime | None = None
    end_time: datetime | None = None
    target_segment_id: int | None = Field(default=None, ge=1, le=BIGINT_MAX)
    content: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per channel: {template_id, variables} and/or inline parts (email subject/html/text, "
        "sms body, push title/body/action_url, in_app title/body, webhook url/payload)",
    )
    budget: Budget | None = None
    ab_test: AbTest | None = None
    schedule: Schedule | None = Field(default=None, description="Recurring campaigns only")
    trigger: dict[str, Any] | None = Field(
        default=None,
        description="Triggered campaigns only: an event rule {event, topic?, where? (segment DSL conditions on the"
        " event's properties), reentry? (once, every, window + reentry_window such as '7_days'), dedup_key?,"
        " limit?} (the audience is target_segment_id, optional) or a profile date {date_field}",
    )
    goals: dict[str, Any] | None = None
    delivery: Delivery | None = Field(default=None, description="Immediate, scheduled and recurring campaigns:"
                                      " deliver at a local hour in each recipient's time zone")


class NewCampaign(_Definition):
    pass


class CampaignPatch(BaseModel):
    """A partial update: only the fields present change; ``status`` goes through the state machine."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=10_000)
    type: str | None = None
    channels: list[str] | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    target_segment_id: int | None = Field(default=None, ge=1, le=BIGINT_MAX)
    content: dict[str, dict[str, Any]] | None = None
    budget: Budget | None = None
    ab_test: AbTest | None = None
    schedule: Schedule | None = None
    trigger: dict[str, Any] | None = None
    goals: dict[str, Any] | None = None
    delivery: Delivery | None = Field(default=None, description="null removes the local-hour option")
    status: Status | None = None


class Metrics(BaseModel):
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    failed: int = 0
    opened: int = 0
    clicked: int = 0
    converted: int = 0
    unsubscribed: int = 0
    revenue: float = 0.0
    queued: int = 0
    deferred: int = 0
    held: int = 0
    cancelled: int = 0
    suppressed: int = 0
    expired: int = Field(default=0, description="Not sent because the campaign reached its end_time")
    suppressed_by_reason: dict[str, int] = {}


class Campaign(BaseModel):
    campaign_id: int
    name: str
    description: str | None
    type: str
    status: Status
    channels: list[str]
    target_segment_id: int | None
    content: dict[str, Any]
    budget: Budget | None
    ab_test: AbTest | None
    schedule: Schedule | None
    trigger: dict[str, Any] | None
    goals: dict[str, Any] | None
    delivery: Delivery | None
    start_time: datetime | None
    end_time: datetime | None
    estimated_recipients: int | None
    estimated_cost: float | None
    audience_size: int | None = Field(description="Audience size frozen at launch")
    metrics: Metrics
    budget_spent: float
    launch_id: uuid.UUID | None
    created_by: int | None
    created_at: datetime
    updated_at: datetime
    launched_at: datetime | None
    paused_at: datetime | None
    cancelled_at: datetime | None
    completed_at: datetime | None
    next_run_at: datetime | None = Field(default=None, description="When a scheduled or recurring campaign"
                                         " fires next (UTC); null when nothing more is scheduled")
    version: int


class CampaignList(BaseModel):
    campaigns: list[Campaign]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")


class LaunchResult(BaseModel):
    campaign_id: int
    status: Status
    launched_at: datetime | None
    launch_id: uuid.UUID | None
    audience_size: int | None
    scheduled_for: datetime | None = Field(description="When a scheduled campaign will start")


# ---------------------------------------------------------------- rows


def campaign_view(row: asyncpg.Record, live: dict[bytes, bytes] | None = None) -> dict[str, Any]:
    """A stored campaign as the API answers it (the ``Campaign`` model's shape), with live counters.

    Built as a plain dict and serialized by orjson: reads are the hot path, and a
    pydantic round trip per row cost more than the query.
    """
    live = live or {}
    spent = live.get(b"budget_spent")
    view = launches.stored_view(row)
    view["metrics"] = {**{name: int(live.get(name.encode(), 0)) for name in _METRICS},
                       "revenue": money_json(live.get(b"revenue", 0)),
                       "suppressed_by_reason": {name[len(_SUPPRESSED_PREFIX):].decode(): int(value)
                                                for name, value in live.items() if name.startswith(_SUPPRESSED_PREFIX)}}
    if spent is not None:
        view["budget_spent"] = money_json(spent)
    return view


def _json_body(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_UTC_Z)


def _answer(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json_body(data), status_code=status_code, headers=headers, media_type="application/json")


async def _live_metrics(request: Request, rows: list[asyncpg.Record]) -> list[dict[bytes, bytes]]:
    """The pipeline's live counters per campaign; never-launched campaigns have none, so Redis is not asked."""
    launched = [r["campaign_id"] for r in rows if r["launched_at"] is not None]
    if not launched:
        return [{} for _ in rows]
    async with request.app.state.redis.pipeline(transaction=False) as pipe:
        for campaign_id in launched:
            pipe.hgetall(metrics_key(campaign_id))
        found = dict(zip(launched, await pipe.execute()))
    return [found.get(r["campaign_id"], {}) for r in rows]


def _etag(version: int) -> str:
    return f'"{version}"'


def _check_if_match(request: Request, row: asyncpg.Record) -> None:
    wanted = request.headers.get("if-match")
    if wanted is None or wanted.strip() == "*":
        return
    tags = {t.strip().removeprefix("W/").strip('"') for t in wanted.split(",")}
    if str(row["version"]) not in tags:
        raise ApiError(
            412,
            "precondition_failed",
            f"campaign {row['campaign_id']} is at version {row['version']}, not {wanted}; reload and retry",
        )


def _campaign_id(request: Request) -> int:
    campaign_id = request.path_params["campaign_id"]
    if campaign_id > BIGINT_MAX:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}")
    return campaign_id


async def _locked(request: Request, conn: asyncpg.Connection) -> asyncpg.Record:
    campaign_id = _campaign_id(request)
    row = await conn.fetchrow("SELECT * FROM campaigns WHERE campaign_id = $1 FOR UPDATE", campaign_id)
    if row is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}")
    _check_if_match(request, row)
    return row


# ---------------------------------------------------------------- neighbours (segments, templates)


# Parsing and compiling Jinja2 text was most of a create's CPU; both checks are pure functions of the
# text, and the same texts (a template's parts, a team's usual subject lines) come back on every
# create, update and launch, so their answers are remembered per text.
@functools.lru_cache(maxsize=8192)
def _syntax_of(part: str, text: str) -> tuple[tuple[str, str], ...]:
    return tuple(templates.template_syntax_problems({part: text}))


@functools.lru_cache(maxsize=8192)
def _needs(text: str) -> frozenset[str]:
    return frozenset(templates.unresolved_variables({"text": text}, ()))


class _RememberedChecks:
    """``pipeline.templates``' checks (``campaign_rules.TemplateChecks``), one text at a time through the caches above."""

    @staticmethod
    def template_syntax_problems(parts: Mapping[str, str]) -> list[tuple[str, str]]:
        return [problem for part, text in parts.items() for problem in _syntax_of(part, text)]

    @staticmethod
    def unresolved_variables(parts: Mapping[str, str], provided: Mapping[str, Any]) -> list[str]:
        return sorted(frozenset().union(*(_needs(text) for text in parts.values())) - set(provided))


TEMPLATE_CHECKS = _RememberedChecks()


async def _audience(state: State, conn: asyncpg.Connection, segment_id: int | None) -> int | None:
    """How many users the segment reaches now, as ``api.segments`` counts it; None if there is no segment."""
    if segment_id is None:
        return None
    return await segments.segment_audience_size(state, conn, segment_id)


# ---------------------------------------------------------------- validation


def _invalid(problems: list[tuple[str, str]]) -> ApiError:
    names = ", ".join(dict.fromkeys(field for field, _ in problems))
    return ApiError(
        422,
        "validation_error",
        f"invalid value for {names}",
        fields=[FieldProblem(field=f, reason=r) for f, r in problems],
    )


async def validate(state: State, conn: asyncpg.Connection, d: dict[str, Any], now: datetime,
                   launching: bool = False) -> int | None:
    """Every problem of a campaign definition in one 422; else the audience its segment reaches now.

    The pure rules, plus what the database knows: that the templates and the
    segment exist, and what the templates need.
    """
    problems = campaign_rules.type_problems(d["type"], d["start_time"], d["schedule"], d["trigger"], d["target_segment_id"])
    problems += campaign_rules.channel_problems(d["channels"])
    problems += campaign_rules.window_problems(d["start_time"], d["end_time"], now)
    if not launching:  # a launch whose start time has come starts now
        problems += campaign_rules.start_problems(d["type"], d["start_time"], now)
    problems += campaign_rules.schedule_problems(d["schedule"])
    problems += campaign_rules.ab_test_problems(d["ab_test"])
    problems += campaign_rules.budget_problems(d["budget"], state.settings.currency_codes)
    problems += campaign_rules.delivery_problems(d.get("delivery"), d["type"], d["trigger"])
    problems += campaign_rules.goal_problems(d.get("goals"))
    stored = {tid: await templates.get_template(conn, tid) for tid in campaign_rules.template_ids(d["content"])}
    problems += campaign_rules.content_problems(d["channels"], d["content"], stored, TEMPLATE_CHECKS)
    recipients = None
    try:
        recipients = await _audience(state, conn, d["target_segment_id"])
    except ApiError as exc:
        if exc.status not in (404, 422):  # 503: the audience store is not ready; nothing to fix in the body
            raise
        problems.append(("target_segment_id", exc.message))
    if problems:
        raise _invalid(problems)
    return recipients


def _dumped(model: BaseModel | None) -> dict[str, Any] | None:
    return None if model is None else model.model_dump(mode="json")


def _from_model(body: BaseModel, fields: set[str]) -> dict[str, Any]:
    """Fields of a request model in the definition's plain shape."""
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(body, name)
        out[name] = _dumped(value) if isinstance(value, BaseModel) else value
    for name in ("start_time", "end_time"):
        if out.get(name) is not None and out[name].tzinfo is None:
            out[name] = out[name].replace(tzinfo=timezone.utc)
    return out


# ---------------------------------------------------------------- Kafka


async def _published(write: Awaitable[asyncpg.Record]) -> asyncpg.Record:
    """A change that publishes to Kafka; a record Kafka did not acknowledge is a 503 (the caller's
    transaction rolls back, so nothing changed)."""
    try:
        return await write
    except launches.PublishError as exc:
        raise ApiError(503, "unavailable", f"{exc}; nothing changed, retry") from None


def _conflict(exc: campaign_rules.IllegalTransition) -> ApiError:
    allowed = ", ".join(exc.allowed) or "none (final)"
    return ApiError(
        409,
        "illegal_transition",
        str(exc),
        fields=[FieldProblem(field="status", reason=f"allowed from {exc.current}: {allowed}")],
    )


# ---------------------------------------------------------------- endpoints

_STORE = (
    "name, description, type, channels, segment_id, content, schedule, budget, ab_test_config, goals,"
    " trigger, start_time, end_time, estimated_recipients, estimated_cost, delivery"
)


def _store_args(d: dict[str, Any], recipients: int | None, cost: Decimal | None) -> list[Any]:
    return [
        d["name"], d["description"], d["type"], d["channels"], d["target_segment_id"], to_json(d["content"]),
        to_json(d["schedule"] or {}), to_json(d["budget"] or {}), to_json(d["ab_test"] or {}), to_json(d["goals"] or {}),
        None if d["trigger"] is None else to_json(d["trigger"]), d["start_time"], d["end_time"], recipients, cost,
        None if d.get("delivery") is None else to_json(d["delivery"]),
    ]


@require_role(*AUTHORS)
@operation("Create a campaign", body=NewCampaign, responses={201: Campaign})
async def create_campaign(request: Request) -> Response:
    """Validates the whole definition (segment, templates, variables, weights, times, budget) and stores a draft.

    The answer carries the audience the segment reaches now and what sending to it would cost.
    """
    body = await parse_body(request, NewCampaign)
    d = _from_model(body, set(NewCampaign.model_fields))
    settings = request.app.state.settings
    async with request.app.state.postgres.acquire() as conn:
        recipients = await validate(request.app.state, conn, d, datetime.now(timezone.utc))
        cost = campaign_rules.estimated_cost(recipients, d["channels"], settings.unit_costs)
        async with conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO campaigns ({_STORE}, created_by) VALUES"
                " ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb, $10::jsonb, $11::jsonb,"
                " $12, $13, $14, $15, $16::jsonb, $17) RETURNING *",
                *_store_args(d, recipients, cost),
                request.state.caller.key_id,
            )
            await audit.record(conn, request.state.caller, "campaign.created", "campaign", row["campaign_id"],
                               None, launches.audit_view(row))
    return _answer(
        campaign_view(row),
        status_code=201,
        headers={"ETag": _etag(row["version"]), "Location": f"/api/v1/campaigns/{row['campaign_id']}"},
    )


@require_role(*ROLES)
@operation("Get a campaign", responses={200: Campaign})
async def get_campaign(request: Request) -> Response:
    """The campaign with its live metrics (sent, delivered, opened, clicked, converted, revenue) and spend."""
    campaign_id = _campaign_id(request)
    row = await request.app.state.postgres.fetchrow("SELECT * FROM campaigns WHERE campaign_id = $1", campaign_id)
    if row is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}")
    (live,) = await _live_metrics(request, [row])
    return _answer(campaign_view(row, live), headers={"ETag": _etag(row["version"])})


def encode_cursor(last_id: int) -> str:
    return paging.encode_cursor("c1", last_id)


def decode_cursor(cursor: str) -> int:
    last_id = paging.decode_cursor("c1", cursor)
    if last_id is None:
        raise _invalid([("cursor", "not a cursor this API returned")])
    return last_id


@require_role(*ROLES)
@operation("List campaigns", responses={200: CampaignList},
           query={"status": STR, "type": STR, "channel": STR, **PAGED})
async def list_campaigns(request: Request) -> Response:
    """Newest first, a page at a time (``limit`` ≤ 200, ``cursor``), optionally by ``status``, ``type`` (a journey's
    send nodes are campaigns of type ``journey``), ``channel``."""
    q = request.query_params
    problems: list[tuple[str, str]] = []
    status, ctype, channel = q.get("status"), q.get("type"), q.get("channel")
    if status is not None and status not in campaign_rules.STATUSES:
        problems.append(("status", f"unknown status {status!r}; known: {', '.join(campaign_rules.STATUSES)}"))
    if ctype is not None and ctype not in LISTED_TYPES:
        problems.append(("type", f"unknown type {ctype!r}; known: {', '.join(LISTED_TYPES)}"))
    if channel is not None and channel not in campaign_rules.CHANNELS:
        problems.append(("channel", f"unknown channel {channel!r}; known: {', '.join(campaign_rules.CHANNELS)}"))
    limit = paging.page_limit(q, problems)
    if problems:
        raise _invalid(problems)
    before = decode_cursor(q["cursor"]) if "cursor" in q else None
    rows = await request.app.state.postgres.fetch(
        "SELECT * FROM campaigns WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR type = $2)"
        " AND ($3::text IS NULL OR channels @> ARRAY[$3::text]) AND ($4::bigint IS NULL OR campaign_id < $4)"
        " ORDER BY campaign_id DESC LIMIT $5",
        status, ctype, channel, before, limit + 1,
    )
    page = rows[:limit]
    live = await _live_metrics(request, page)
    return _answer({
        "campaigns": [campaign_view(r, m) for r, m in zip(page, live)],
        "next_cursor": encode_cursor(page[-1]["campaign_id"]) if len(rows) > limit else None,
    })


async def _change_status(
    request: Request, conn: asyncpg.Connection, row: asyncpg.Record, target: str, now: datetime
) -> asyncpg.Record:
    """Apply a pause, resume, cancel or complete: update, audit, publish the control record."""
    current = row["status"]
    if (current, target) == ("paused", "active"):  # between a recurring campaign's runs: back to waiting
        target = campaign_rules.resume_status(await launches.run_sending(conn, row))
    try:
        campaign_rules.transition(current, target)
    except campaign_rules.IllegalTransition as exc:
        raise _conflict(exc) from None
    action = campaign_rules.control_action(current, target)
    if action is None:  # draft/scheduled -> scheduled/active starts sending: that is a launch
        raise ApiError(
            409,
            "launch_required",
            f"a {current} campaign starts with POST /api/v1/campaigns/{row['campaign_id']}/launch",
            fields=[FieldProblem(field="status", reason="use the launch endpoint to schedule or start a campaign")],
        )
    return await _published(launches.change_status(conn, request.app.state.kafka, row, target, action,
                                                   request.state.caller, now))


@require_role(*AUTHORS)
@operation("Update a campaign", body=CampaignPatch, responses={200: Campaign})
async def update_campaign(request: Request) -> Response:
    """Changes the fields sent; ``status`` pauses, resumes, cancels or completes through the state machine.

    Content, audience and schedule can change only while the campaign is a
    draft or scheduled; name and description at any time. Send ``If-Match``
    with the ETag to refuse (412) an update based on an old version.
    """
    patch = await parse_body(request, CampaignPatch)
    changes = _from_model(patch, patch.model_fields_set - {"status"})
    now = datetime.now(timezone.utc)
    settings = request.app.state.settings
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _locked(request, conn)
        current = launches.definition(row)
        changed = {k: v for k, v in changes.items() if v != current[k]}
        nulls = [k for k in ("name", "type", "channels", "content") if k in changed and changed[k] is None]
        if nulls:
            raise _invalid([(k, "cannot be null") for k in nulls])
        frozen = sorted(set(changed) & _DEFINITION_FIELDS)
        if frozen and row["status"] not in campaign_rules.EDITABLE_STATUSES:
            raise ApiError(
                409,
                "campaign_frozen",
                f"a {row['status']} campaign's {', '.join(frozen)} can no longer change;"
                " only draft or scheduled campaigns can be edited",
                fields=[FieldProblem(field=f, reason=f"frozen while {row['status']}") for f in frozen],
            )
        after = row
        if changed:
            merged = {**current, **changed}
            recipients, cost = row["estimated_recipients"], row["estimated_cost"]
            if frozen:  # the definition changed: check it whole again, and estimate afresh
                recipients = await validate(request.app.state, conn, merged, now)
                cost = campaign_rules.estimated_cost(recipients, merged["channels"], settings.unit_costs)
            after = await conn.fetchrow(
                f"UPDATE campaigns SET ({_STORE}) = ($2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb,"
                " $10::jsonb, $11::jsonb, $12::jsonb, $13, $14, $15, $16, $17::jsonb), version = version + 1,"
                " updated_at = $18"
                " WHERE campaign_id = $1 RETURNING *",
                row["campaign_id"], *_store_args(merged, recipients, cost), now,
            )
            await audit.record(conn, request.state.caller, "campaign.updated", "campaign", row["campaign_id"],
                               launches.audit_view(row), launches.audit_view(after))
            if frozen:  # a scheduled campaign's new start or cron: its next occurrence moves with it
                after = await launches.reschedule(conn, after, now)
        if patch.status is not None and patch.status != after["status"]:
            after = await _change_status(request, conn, after, patch.status, now)
    if after["type"] == "triggered" and after["status"] != row["status"]:
        await journey_store.tell_workers(request.app.state.redis, campaign_id=after["campaign_id"])
    (live,) = await _live_metrics(request, [after])
    return _answer(campaign_view(after, live), headers={"ETag": _etag(after["version"])})


@require_role(*AUTHORS)
@operation("Delete a draft campaign", responses={204: NO_BODY})
async def delete_campaign(request: Request) -> Response:
    """Removes a draft; a campaign that was scheduled or sent is cancelled instead, and kept for reporting."""
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _locked(request, conn)
        if row["status"] != "draft":
            hint = ("cancel it first (PATCH status cancelled); it is then kept for reporting"
                    if row["status"] not in campaign_rules.FINAL_STATUSES else "it is kept for reporting and audit")
            raise ApiError(
                409,
                "not_deletable",
                f"only draft campaigns can be deleted; campaign {row['campaign_id']} is {row['status']}: {hint}",
                fields=[FieldProblem(field="status", reason=f"is {row['status']}, must be draft")],
            )
        await conn.execute("DELETE FROM campaigns WHERE campaign_id = $1", row["campaign_id"])
        await audit.record(conn, request.state.caller, "campaign.deleted", "campaign", row["campaign_id"],
                           launches.audit_view(row), None)
    return Response(status_code=204)


async def launch(
    state: State, conn: asyncpg.Connection, row: asyncpg.Record, actor: Caller | None, now: datetime,
    due: bool = False,
) -> tuple[asyncpg.Record, datetime | None]:
    """Schedule or start a draft or scheduled campaign, locked on ``conn``; returns the new row and when it sends.

    A campaign that starts now gets a new ``launch_id``, its audience size
    frozen, and a ``CampaignLaunch`` on Kafka. One that starts later (a future
    start_time, or a cron) only becomes ``scheduled``, with ``next_run_at`` its
    first occurrence: the scheduler stage (``agents/schedule.py``) fires it then.
    ``due=True`` starts a scheduled campaign now (a caller that decided its time
    has come, inside its own transaction).
    """
    current = row["status"]
    d = launches.definition(row)
    target = campaign_rules.launch_status(d["type"], d["start_time"], now, d["trigger"])
    if current == "scheduled" and due:
        target = "active"
    if current not in ("draft", "scheduled") or (current, target) == ("scheduled", "scheduled"):
        allowed = ", ".join(campaign_rules.allowed_transitions(current)) or "none (final)"
        starts = campaign_rules.first_run(d["type"], d["start_time"], d["schedule"], now, d["trigger"])
        already = f"it is scheduled and starts {starts}" if current == "scheduled" else f"it is {current}"
        raise ApiError(
            409,
            "illegal_transition",
            f"only draft campaigns, or scheduled ones whose time has come, can be launched; campaign"
            f" {row['campaign_id']}: {already} (allowed from {current}: {allowed})",
            fields=[FieldProblem(field="status", reason=f"allowed from {current}: {allowed}")],
        )
    campaign_rules.transition(current, target)
    audience_size = await validate(state, conn, d, now, launching=True)
    if target == "scheduled":
        after = await launches.schedule(conn, row, actor, now)
        return after, campaign_rules.first_run(d["type"], d["start_time"], d["schedule"], now, d["trigger"])
    after = await _published(launches.start(conn, state.kafka, row, actor, audience_size, now))
    return after, None


@require_role(*AUTHORS)
@operation("Launch a campaign", responses={200: LaunchResult})
async def launch_campaign(request: Request) -> Response:
    """Starts sending now (status active, a launch record on Kafka), or schedules a campaign that starts later.

    The definition is validated again (its segment or templates may have
    gone). A 200 means the launch record is durable in Kafka.
    """
    now = datetime.now(timezone.utc)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await _locked(request, conn)
        after, starts = await launch(request.app.state, conn, row, request.state.caller, now)
    if after["type"] == "triggered":
        await journey_store.tell_workers(request.app.state.redis, campaign_id=after["campaign_id"])
    result = LaunchResult(
        campaign_id=after["campaign_id"], status=after["status"], launched_at=after["launched_at"],
        launch_id=after["launch_id"], audience_size=after["audience_size"], scheduled_for=starts,
    )
    return _answer(result.model_dump(mode="json"), headers={"ETag": _etag(after["version"])})


routes = [
    Route("/api/v1/campaigns", create_campaign, methods=["POST"]),
    Route("/api/v1/campaigns", list_campaigns, methods=["GET"]),
    Route("/api/v1/campaigns/{campaign_id:int}", get_campaign, methods=["GET"]),
    Route("/api/v1/campaigns/{campaign_id:int}", update_campaign, methods=["PATCH"]),
    Route("/api/v1/campaigns/{campaign_id:int}", delete_campaign, methods=["DELETE"]),
    Route("/api/v1/campaigns/{campaign_id:int}/launch", launch_campaign, methods=["POST"]),
]

"""Journeys in PostgreSQL: drafts, published versions, and the campaigns that carry their sends.

The API (``api/journeys.py``) locks the journey row, calls these in its transaction and commits; the
pure model (``pipeline.journeys.model``) says whether a definition holds together, and this module
asks the database what the model cannot know (which templates and segments exist).

Publishing version n of journey j, in one transaction:

    journey_versions (j, n)   the draft frozen as it is, step_campaigns {send node: campaign_id}
    campaigns                 one per send node: type 'journey', status 'active', journey_id j,
                              journey_version n, journey_node <node>, content {channel: {template_id,
                              variables}}; its running status in Redis set to active
    journeys                  status live, live_version n, published_at
    audit_log                 journey.published, and campaign.created for each step campaign

after which the caller bumps ``FLOWS_CHANGED`` (``flows_changed``): the workers reload their flows
when it moves. A version is never changed once published (users inside finish on the version they
entered with), so the campaigns of an older version stay as they are.

Progress (``progress_view``) joins the flow's live counters, which the journey workers keep in
Redis (``flow:j<id>:progress``), with the delivery counters of each step campaign
(``campaign:<id>:metrics``, kept by the aggregate stage).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog
from redis.exceptions import RedisError

from pipeline import audit, launches
from pipeline.audit import Actor
from pipeline.campaign_state import set_campaign_status
from pipeline.journeys.model import Journey, Send, parse_journey
from schemas.encoding import from_json, is_bigint_id, to_json
from schemas.keys import FLOWS_CHANGED, flow_progress_key, metrics_key

log = structlog.get_logger()

STATUSES = ("draft", "live", "stopped")
EXIT_REASONS = ("goal", "exit", "stopped")  # why users leave a flow (pipeline.journeys.engine)
NODE_COUNTERS = ("sent", "suppressed", "opened", "clicked")  # of a send node's campaign (pipeline.metrics)
_NAME_MAX = 255


def flow_key(journey_id: int) -> str:
    """A journey's flow, as the workers and their Redis keys name it."""
    return f"j{journey_id}"


# ---------------------------------------------------------------- what a draft names


def referenced(raw: object) -> tuple[set[int], set[int]]:
    """The template ids and segment ids a raw (unvalidated) draft names: its send nodes' templates,
    its entry's segment and its conditions' segments. Whatever is malformed is skipped; the model
    reports it."""
    templates: set[int] = set()
    segments: set[int] = set()

    def an_id(value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and is_bigint_id(value) else None

    nodes = raw.get("nodes") if isinstance(raw, Mapping) else None
    for node in nodes if isinstance(nodes, list) else ():
        if not isinstance(node, Mapping):
            continue
        if node.get("type") == "send" and (tid := an_id(node.get("template_id"))):
            templates.add(tid)
        if node.get("type") == "entry" and (sid := an_id(node.get("segment_id"))):
            segments.add(sid)
        test = node.get("if") if node.get("type") == "condition" else None
        if isinstance(test, Mapping) and (sid := an_id(test.get("segment"))):
            segments.add(sid)
    return templates, segments


async def checked(conn: asyncpg.Connection, raw: object) -> Journey:
    """The draft parsed against the templates and segments stored now; ``DefinitionError`` lists every
    problem, each naming its node (a missing template, one of another channel, an unknown segment...)."""
    template_ids, segment_ids = referenced(raw)
    templates = {r["template_id"]: r["channel"] for r in await conn.fetch(
        "SELECT template_id, channel FROM templates WHERE template_id = ANY($1::bigint[])", sorted(template_ids))}
    segments = {r["segment_id"]: r["kind"] for r in await conn.fetch(
        "SELECT segment_id, kind FROM segments WHERE segment_id = ANY($1::bigint[])", sorted(segment_ids))}
    return parse_journey(raw, templates, segments)


# ---------------------------------------------------------------- rows and views


def journey_view(row: asyncpg.Record) -> dict[str, Any]:
    """A stored journey as the API answers it (and its audit rows keep it)."""
    return {
        "journey_id": row["journey_id"],
        "name": row["name"],
        "description": row["description"],
        "status": row["status"],
        "definition": from_json(row["draft"]),
        "live_version": row["live_version"],
        "version": row["version"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "published_at": row["published_at"],
        "stopped_at": row["stopped_at"],
    }


def audit_view(row: asyncpg.Record) -> dict[str, Any]:
    """``journey_view`` as JSON values (times in UTC with a Z), as the audit log stores it."""
    return orjson.loads(orjson.dumps(journey_view(row), option=orjson.OPT_UTC_Z))


def version_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "version": row["version"],
        "published_at": row["published_at"],
        "published_by": row["published_by"],
        "step_campaigns": {node: int(cid) for node, cid in (from_json(row["step_campaigns"]) or {}).items()},
    }


def _description(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("description")
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------- drafts


async def create(conn: asyncpg.Connection, raw: Mapping[str, Any], journey: Journey, actor: Actor) -> asyncpg.Record:
    """Store a validated draft (``raw`` as given) and its audit row."""
    row = await conn.fetchrow(
        "INSERT INTO journeys (name, description, draft, created_by) VALUES ($1, $2, $3::jsonb, $4) RETURNING *",
        journey.name, _description(raw), to_json(raw), actor.name,
    )
    await audit.record(conn, actor, "journey.created", "journey", row["journey_id"], None, audit_view(row))
    return row


async def replace(conn: asyncpg.Connection, row: asyncpg.Record, raw: Mapping[str, Any], journey: Journey,
                  actor: Actor, now: datetime) -> asyncpg.Record:
    """Replace the draft of a locked journey; what is live stays live until the next publish."""
    after = await conn.fetchrow(
        "UPDATE journeys SET name = $2, description = $3, draft = $4::jsonb, version = version + 1, updated_at = $5"
        " WHERE journey_id = $1 RETURNING *",
        row["journey_id"], journey.name, _description(raw), to_json(raw), now,
    )
    await audit.record(conn, actor, "journey.updated", "journey", row["journey_id"], audit_view(row), audit_view(after))
    return after


async def delete(conn: asyncpg.Connection, row: asyncpg.Record, actor: Actor) -> None:
    """Remove a locked journey that was never published (the caller checks)."""
    await conn.execute("DELETE FROM journeys WHERE journey_id = $1", row["journey_id"])
    await audit.record(conn, actor, "journey.deleted", "journey", row["journey_id"], audit_view(row), None)


# ---------------------------------------------------------------- publishing


def step_name(journey_name: str, version: int, node_id: str) -> str:
    """"<journey> · v<n> · <node>", the journey's name shortened so that the whole fits the column."""
    tail = f" · v{version} · {node_id}"
    room = _NAME_MAX - len(tail)
    name = journey_name if len(journey_name) <= room else journey_name[: room - 1] + "…"
    return name + tail


def step_campaign(journey_name: str, version: int, send: Send, quiet_hours: object = None) -> dict[str, Any]:
    """The campaign that carries one send node's messages: its channel, template, variables and variants.
    It has no audience, schedule or trigger: the journey workers hand it one user at a time."""
    return {
        "name": step_name(journey_name, version, send.id),
        "channels": [send.channel],
        "content": {send.channel: {"template_id": send.template_id, "variables": dict(send.variables)}},
        "ab_test": ({"enabled": True, "variants": [{"id": v, "weight": w} for v, w in send.variants]}
                    if send.variants else {}),
        "journey_node": send.id,
        # The journey's quiet hours, as the gate reads a campaign's (pipeline/gate.py quiet_window).
        "schedule": {} if quiet_hours is None else {"quiet_hours": quiet_hours},
    }


async def publish(conn: asyncpg.Connection, redis: Any, row: asyncpg.Record, journey: Journey, actor: Actor,
                  now: datetime) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Freeze the locked journey's draft (validated as ``journey``) as its next version, with one active
    campaign per send node, and make it the live one. Returns the journey row and the version row.

    Each step campaign's running status is set in Redis before the caller commits: the ids are new and
    nobody reads them until the commit and ``flows_changed``."""
    journey_id = row["journey_id"]
    version = await conn.fetchval(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM journey_versions WHERE journey_id = $1", journey_id)
    steps: dict[str, int] = {}
    for send in journey.sends():
        step = step_campaign(journey.name, version, send, journey.quiet_hours)
        campaign = await conn.fetchrow(
            "INSERT INTO campaigns (name, description, type, status, channels, content, schedule, ab_test_config,"
            " goals, created_by, launched_at, journey_id, journey_version, journey_node)"
            " VALUES ($1, $2, 'journey', 'active', $3, $4::jsonb, $11::jsonb, $5::jsonb, '{}'::jsonb, $6, $7, $8, $9,"
            " $10) RETURNING *",
            step["name"], f"Messages of send node {send.id!r} of journey {journey_id}, version {version}",
            step["channels"], to_json(step["content"]), to_json(step["ab_test"]), actor.key_id, now, journey_id,
            version, send.id, to_json(step["schedule"]),
        )
        steps[send.id] = campaign["campaign_id"]
        await audit.record(conn, actor, "campaign.created", "campaign", campaign["campaign_id"], None,
                           launches.audit_view(campaign))
    published = await conn.fetchrow(
        "INSERT INTO journey_versions (journey_id, version, definition, step_campaigns, published_by, published_at)"
        " SELECT journey_id, $2, draft, $3::jsonb, $4, $5 FROM journeys WHERE journey_id = $1 RETURNING *",
        journey_id, version, to_json(steps), actor.name, now,
    )
    after = await conn.fetchrow(
        "UPDATE journeys SET status = 'live', live_version = $2, published_at = $3, stopped_at = NULL,"
        " version = version + 1, updated_at = $3 WHERE journey_id = $1 RETURNING *",
        journey_id, version, now,
    )
    await audit.record(conn, actor, "journey.published", "journey", journey_id, audit_view(row),
                       {**audit_view(after), "published": {"version": version, "step_campaigns": steps}})
    for campaign_id in steps.values():
        await set_campaign_status(redis, campaign_id, "active")
    return after, published


async def stop(conn: asyncpg.Connection, row: asyncpg.Record, actor: Actor, now: datetime,
               redis: Any = None) -> asyncpg.Record:
    """Nobody enters a locked live journey any more; the workers take the users inside out (at their next
    timer or event), and its step campaigns are cancelled, so what was queued for anyone is not sent."""
    after = await conn.fetchrow(
        "UPDATE journeys SET status = 'stopped', stopped_at = $2, version = version + 1, updated_at = $2"
        " WHERE journey_id = $1 RETURNING *", row["journey_id"], now,
    )
    steps = await conn.fetch("UPDATE campaigns SET status = 'cancelled', cancelled_at = $2, updated_at = $2"
                             " WHERE journey_id = $1 AND status = 'active' RETURNING campaign_id", row["journey_id"], now)
    if redis is not None:
        for step in steps:
            await set_campaign_status(redis, step["campaign_id"], "cancelled")
    await audit.record(conn, actor, "journey.stopped", "journey", row["journey_id"], audit_view(row), audit_view(after))
    return after


async def flows_changed(redis: Any) -> None:
    """Tell the workers to reload their flows (after the change is committed)."""
    await redis.incr(FLOWS_CHANGED)


async def tell_workers(redis: Any, **context: Any) -> None:
    """``flows_changed`` after a commit that changed what the trigger stages load (a journey, an event-triggered
    campaign's status). Should Redis fail now, the change stands: the workers reload within
    ``journey_reload_s`` anyway, so this is logged, not raised."""
    try:
        await flows_changed(redis)
    except (RedisError, OSError) as exc:
        log.warning("flows:changed not bumped; workers pick the change up at their next reload",
                    error=repr(exc), **context)


async def versions(conn: asyncpg.Connection | asyncpg.Pool, journey_id: int) -> list[asyncpg.Record]:
    """A journey's published versions, newest first."""
    return await conn.fetch("SELECT * FROM journey_versions WHERE journey_id = $1 ORDER BY version DESC", journey_id)


# ---------------------------------------------------------------- progress


def _count(values: Mapping[bytes, bytes], name: str) -> int:
    raw = values.get(name.encode())
    return int(float(raw)) if raw is not None else 0


def node_list(definition: object) -> list[tuple[str, str]]:
    """(id, type) of a stored definition's nodes, in definition order."""
    nodes = definition.get("nodes") if isinstance(definition, Mapping) else None
    return [(n["id"], n.get("type")) for n in nodes or () if isinstance(n, Mapping) and isinstance(n.get("id"), str)]


def progress_view(row: asyncpg.Record | Mapping[str, Any], nodes: Sequence[tuple[str, str]],
                  flow: Mapping[bytes, bytes], step_campaigns: Iterable[Mapping[str, int]],
                  counters: Mapping[int, Mapping[bytes, bytes]]) -> dict[str, Any]:
    """Where a journey's users are and what its sends did.

    ``flow`` is the flow's progress hash (entered, at:<node>, exited:<reason>, timed_out, converted),
    ``step_campaigns`` each version's {send node: campaign}, ``counters`` each step campaign's metrics
    hash; a node's message counts add up over every version that has it."""
    per_node: dict[str, dict[str, int]] = {}
    for steps in step_campaigns:
        for node_id, campaign_id in steps.items():
            sums = per_node.setdefault(node_id, dict.fromkeys(NODE_COUNTERS, 0))
            for name in NODE_COUNTERS:
                sums[name] += _count(counters.get(campaign_id, {}), name)
    exited = {reason: _count(flow, f"exited:{reason}") for reason in EXIT_REASONS}
    for field in flow:  # reasons the workers give besides the usual three are reported too
        name = field.decode()
        if name.startswith("exited:") and name[len("exited:"):] not in exited:
            exited[name[len("exited:"):]] = _count(flow, name)
    return {
        "journey_id": row["journey_id"],
        "status": row["status"],
        "live_version": row["live_version"],
        "entered": _count(flow, "entered"),
        "inside": sum(_count(flow, f.decode()) for f in flow if f.startswith(b"at:")),
        "conversions": _count(flow, "converted"),
        "exited": exited,
        "timed_out": _count(flow, "timed_out"),
        "nodes": [{"id": node_id, "type": kind, "users": _count(flow, f"at:{node_id}"),
                   **per_node.get(node_id, dict.fromkeys(NODE_COUNTERS, 0))} for node_id, kind in nodes],
    }


async def progress(conn: asyncpg.Connection | asyncpg.Pool, redis: Any, row: asyncpg.Record) -> dict[str, Any]:
    """``progress_view`` of a journey, read from PostgreSQL (its versions) and Redis (the counters).
    The nodes are those of the live version, else the newest, else the draft's."""
    published = await versions(conn, row["journey_id"])
    shown = next((v for v in published if v["version"] == row["live_version"]), published[0] if published else None)
    definition = from_json(shown["definition"]) if shown is not None else from_json(row["draft"])
    steps = [version_view(v)["step_campaigns"] for v in published]
    campaign_ids = sorted({cid for s in steps for cid in s.values()})
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(flow_progress_key(flow_key(row["journey_id"])))
        for campaign_id in campaign_ids:
            pipe.hgetall(metrics_key(campaign_id))
        flow, *found = await pipe.execute()
    view = progress_view(row, node_list(definition), flow, steps, dict(zip(campaign_ids, found)))
    view["versions"] = [version_view(v) for v in published]
    return view

"""Launching a campaign and changing its running status: the PostgreSQL writes, their audit rows and
the Kafka records, in the order that makes a success durable.

Order of effects for every change: the caller locks the campaign row in its transaction; here the
row is updated, its audit row written (``pipeline.audit``), and the record published with the
broker's acknowledgement awaited (acks=all); the caller then commits. If Kafka fails,
``PublishError`` is raised and the caller's transaction rolls back. The one gap left (Kafka
acknowledged, then the commit failed) leaves a record whose ``launch_id`` is not the campaign's
committed one; explode tells (``pipeline.explode.superseded``).

The API (``api/campaigns.py``) calls these after validating a request; a scheduler stage can call
them too, with the worker's producer, without the API. The rules (which transition, which action)
are ``pipeline.campaigns``'.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from pipeline import audit
from pipeline import campaigns as campaign_rules
from pipeline.audit import Actor
from pipeline.money import money_json
from schemas.campaigns import CampaignControl, CampaignLaunch, campaign_key
from schemas.encoding import encode, from_json
from schemas.topics import CAMPAIGN_CONTROL, CAMPAIGN_LAUNCHES

PUBLISH_TIMEOUT_S = 10.0
PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "complete": "completed", "expire": "expired"}
STAMP = {"pause": "paused_at", "cancel": "cancelled_at", "complete": "completed_at"}


class PublishError(Exception):
    """Kafka did not acknowledge the record in time; nothing may be committed."""

    def __init__(self, topic: str, cause: BaseException) -> None:
        super().__init__(f"could not publish to {topic} ({cause.__class__.__name__})")
        self.topic = topic


def definition(row: asyncpg.Record) -> dict[str, Any]:
    """A stored campaign in the shape the API accepts (and validation reads)."""
    return {
        "name": row["name"],
        "description": row["description"],
        "type": row["type"],
        "channels": list(row["channels"]),
        "start_time": row["start_time"],
        "end_time": row["end_time"],
        "target_segment_id": row["segment_id"],
        "content": from_json(row["content"]) or {},
        "budget": from_json(row["budget"]) or None,
        "ab_test": from_json(row["ab_test_config"]) or None,
        "schedule": from_json(row["schedule"]) or None,
        "trigger": from_json(row["trigger"]),
        "goals": from_json(row["goals"]) or None,
        "delivery": from_json(row["delivery"]),
    }


def stored_view(row: asyncpg.Record) -> dict[str, Any]:
    """A stored campaign as its audit rows keep it (and the API answers it, with live metrics added)."""
    return {
        "campaign_id": row["campaign_id"],
        "status": row["status"],
        **definition(row),
        "estimated_recipients": row["estimated_recipients"],
        "estimated_cost": money_json(row["estimated_cost"]),
        "audience_size": row["audience_size"],
        "budget_spent": money_json(row["budget_spent"]),
        "launch_id": None if row["launch_id"] is None else str(row["launch_id"]),
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "launched_at": row["launched_at"],
        "paused_at": row["paused_at"],
        "cancelled_at": row["cancelled_at"],
        "completed_at": row["completed_at"],
        "next_run_at": row.get("next_run_at"),
        "version": row["version"],
    }


def audit_view(row: asyncpg.Record) -> dict[str, Any]:
    """``stored_view`` as JSON values (times in UTC with a Z), as the audit log stores it."""
    return orjson.loads(orjson.dumps(stored_view(row), option=orjson.OPT_UTC_Z))


def launch_record(row: asyncpg.Record, launch_id: uuid.UUID, audience_size: int | None, now: datetime,
                  occurrence: datetime | None = None) -> CampaignLaunch:
    d = definition(row)
    ab = d["ab_test"] or {}
    return CampaignLaunch(
        launch_id=launch_id,
        campaign_id=row["campaign_id"],
        name=d["name"],
        type=d["type"],
        segment_id=d["target_segment_id"],
        channels=d["channels"],
        content=d["content"],
        variants=ab.get("variants", []) if ab.get("enabled") else [],
        budget=d["budget"],
        trigger=d["trigger"],
        start_time=d["start_time"],
        end_time=d["end_time"],
        audience_size=audience_size,
        launched_at=now,
        occurrence=occurrence,
    )


async def publish(producer: AIOKafkaProducer, topic: str, campaign_id: int, record: BaseModel,
                  timeout_s: float | None = None) -> None:
    """Send keyed by campaign and await the broker's acknowledgement (within ``PUBLISH_TIMEOUT_S`` unless
    told); ``PublishError`` if it does not come."""
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, key=campaign_key(campaign_id), value=encode(record)),
                               PUBLISH_TIMEOUT_S if timeout_s is None else timeout_s)
    except (KafkaError, asyncio.TimeoutError) as exc:
        raise PublishError(topic, exc) from None


async def schedule(conn: asyncpg.Connection, row: asyncpg.Record, actor: Actor | None, now: datetime
                   ) -> asyncpg.Record:
    """A draft that starts later becomes scheduled, with ``next_run_at`` its first occurrence: the
    scheduler (``pipeline.schedule_io``) fires it then."""
    d = definition(row)
    next_run_at = campaign_rules.first_run(d["type"], d["start_time"], d["schedule"], now, d["trigger"])
    after = await conn.fetchrow(
        "UPDATE campaigns SET status = 'scheduled', next_run_at = $3, version = version + 1, updated_at = $2"
        " WHERE campaign_id = $1 RETURNING *", row["campaign_id"], now, next_run_at,
    )
    await audit.record(conn, actor, "campaign.scheduled", "campaign", row["campaign_id"], audit_view(row),
                       audit_view(after))
    return after


async def reschedule(conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> asyncpg.Record:
    """A scheduled campaign whose start, cron or end changed waits for its new first occurrence."""
    if row["status"] != "scheduled":
        return row
    d = definition(row)
    next_run_at = campaign_rules.first_run(d["type"], d["start_time"], d["schedule"], now, d["trigger"])
    if next_run_at == row["next_run_at"]:
        return row
    return await conn.fetchrow("UPDATE campaigns SET next_run_at = $2 WHERE campaign_id = $1 RETURNING *",
                               row["campaign_id"], next_run_at)


async def start(conn: asyncpg.Connection, producer: AIOKafkaProducer, row: asyncpg.Record, actor: Actor | None,
                audience_size: int | None, now: datetime) -> asyncpg.Record:
    """Start sending: a new ``launch_id``, the audience size frozen, status active, and a
    ``CampaignLaunch`` on Kafka (acknowledged before the caller commits)."""
    launch_id = uuid.uuid4()
    after = await conn.fetchrow(
        "UPDATE campaigns SET status = 'active', launch_id = $2, launched_at = $3, audience_size = $4,"
        " next_run_at = NULL, version = version + 1, updated_at = $3 WHERE campaign_id = $1 RETURNING *",
        row["campaign_id"], launch_id, now, audience_size,
    )
    await audit.record(conn, actor, "campaign.launched", "campaign", row["campaign_id"], audit_view(row),
                       audit_view(after))
    await publish(producer, CAMPAIGN_LAUNCHES.name, row["campaign_id"],
                  launch_record(after, launch_id, audience_size, now))
    return after


async def run_sending(conn: asyncpg.Connection, row: asyncpg.Record) -> bool:
    """Whether the campaign's current launch is still sending: an immediate launch (no run row) until it
    completes, a scheduled or recurring run until its row is completed, skipped or cancelled."""
    if row["launch_id"] is None:
        return False
    state = await conn.fetchval("SELECT state FROM campaign_runs WHERE launch_id = $1", row["launch_id"])
    return state is None or state in ("fired", "published")


async def change_status(conn: asyncpg.Connection, producer: AIOKafkaProducer, row: asyncpg.Record, target: str,
                        action: str, actor: Actor | None, now: datetime) -> asyncpg.Record:
    """Pause, resume, cancel or complete (``action``, ``pipeline.campaigns.control_action``): update,
    audit, and a ``CampaignControl`` on Kafka for the control stage."""
    stamp = STAMP.get(action)
    after = await conn.fetchrow(
        "UPDATE campaigns SET status = $2, version = version + 1, updated_at = $3"
        + (f", {stamp} = $3" if stamp else "")
        + (", next_run_at = NULL" if target in campaign_rules.FINAL_STATUSES else "")
        + " WHERE campaign_id = $1 RETURNING *",
        row["campaign_id"], target, now,
    )
    await audit.record(conn, actor, f"campaign.{PAST[action]}", "campaign", row["campaign_id"], audit_view(row),
                       audit_view(after))
    if target == "cancelled":  # a recurring campaign's run that was sending ends with it
        await conn.execute("UPDATE campaign_runs SET state = 'cancelled', completed_at = $2"
                           " WHERE campaign_id = $1 AND state IN ('fired', 'published')", row["campaign_id"], now)
    control = CampaignControl(
        control_id=uuid.uuid4(), campaign_id=row["campaign_id"], action=action, previous_status=row["status"],
        status=target, launch_id=row["launch_id"], issued_at=now,
    )
    await publish(producer, CAMPAIGN_CONTROL.name, row["campaign_id"], control)
    return after


async def fire(conn: asyncpg.Connection, row: asyncpg.Record, launch_id: uuid.UUID, now: datetime,
               next_run_at: datetime | None) -> asyncpg.Record:
    """A scheduled run starts: status active, the run's ``launch_id`` committed (explode checks it), the
    next occurrence, the audit row by Herald. Publishing is the caller's next step, AFTER its commit
    (``publish_launch``): the scheduler commits the run first so that a crash never fires it twice."""
    after = await conn.fetchrow(
        "UPDATE campaigns SET status = 'active', launch_id = $2, launched_at = $3, audience_size = NULL,"
        " next_run_at = $4, version = version + 1, updated_at = $3 WHERE campaign_id = $1 RETURNING *",
        row["campaign_id"], launch_id, now, next_run_at,
    )
    await audit.record(conn, None, "campaign.launched", "campaign", row["campaign_id"], audit_view(row),
                       audit_view(after))
    return after


async def publish_launch(producer: AIOKafkaProducer, row: asyncpg.Record, launch_id: uuid.UUID, fired_at: datetime,
                         occurrence: datetime | None, timeout_s: float | None = None) -> None:
    """The launch record of a fired run on ``campaign-launches``, acknowledged (``PublishError`` if not)."""
    await publish(producer, CAMPAIGN_LAUNCHES.name, row["campaign_id"],
                  launch_record(row, launch_id, None, fired_at, occurrence), timeout_s)

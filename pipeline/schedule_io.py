"""The scheduler's store calls: claiming due campaigns, firing their runs exactly once, re-publishing
runs a dead worker left behind, stopping campaigns at their end time, and completing a run.

PostgreSQL: ``campaigns`` (``next_run_at``, status, ``launch_id``, ``expired_at``), ``campaign_runs``
(one row per occurrence, UNIQUE (campaign_id, occurrence)), ``launch_audiences`` (read: a run whose
launch explode skipped or found empty), ``audit_log`` (``pipeline.audit``).
Kafka: ``campaign-launches`` (a fired run's ``CampaignLaunch``), ``campaign-control`` (``expire``), both
published with the broker's acknowledgement awaited (``pipeline.launches``).
Redis (``schemas.keys``): ``campaign:{id}:metrics``, ``:run_base``, ``:audience`` read when a run completes.

Firing one occurrence, in this order:

1. one transaction: ``SELECT … FOR UPDATE SKIP LOCKED`` the due campaigns (a second scheduler skips
   the rows the first holds and finds them no longer due once it commits), insert the run row
   (state ``fired``, its deterministic launch id), commit the campaign's new status, launch id and
   ``next_run_at``. COMMIT.
2. publish the launch record, acknowledged;
3. the run becomes ``published``.

Killed between 1 and 3, the run stays ``fired``: every tick re-publishes runs left ``fired`` for more
than ``schedule_republish_after_s``. The launch id is the same (uuid5 of campaign and occurrence), so
explode processes it once, however many times it was published. The decisions are
``pipeline.schedule``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg
import orjson
import structlog

from config import Settings
from pipeline import audit, launches
from pipeline import campaigns as campaign_rules
from pipeline import schedule as plan
from pipeline.campaign_state import set_campaign_status
from pipeline.worker_clients import WorkerClients
from schemas.campaigns import CampaignControl
from schemas.encoding import from_json, to_json
from schemas.keys import audience_key, metrics_key, run_base_key
from schemas.topics import CAMPAIGN_CONTROL

log = structlog.get_logger("herald.schedule")

_DUE = (
    "SELECT * FROM campaigns WHERE next_run_at <= $1"
    " AND (status = 'scheduled'"
    "      OR ((type = 'recurring' OR trigger ? 'date_field') AND status IN ('active', 'paused')))"
    " AND ($3::bigint[] IS NULL OR campaign_id = ANY($3::bigint[]))"
    " ORDER BY next_run_at LIMIT $2 FOR UPDATE SKIP LOCKED"
)
_INSERT_RUN = (
    "INSERT INTO campaign_runs (campaign_id, occurrence, state, reason, launch_id, fired_at)"
    " VALUES ($1, $2, $3::varchar, $4, $5, CASE WHEN $3::varchar = 'fired' THEN clock_timestamp() END)"
    " ON CONFLICT (campaign_id, occurrence) DO NOTHING RETURNING run_id, fired_at"
)
_ANY_DUE = (
    "SELECT EXISTS (SELECT 1 FROM campaigns WHERE next_run_at <= $1"
    " AND (status = 'scheduled'"
    "      OR ((type = 'recurring' OR trigger ? 'date_field') AND status IN ('active', 'paused'))))"
)


@dataclass(frozen=True)
class Fired:
    """A run committed as fired, whose launch record is still to be published."""

    row: asyncpg.Record  # the campaign after firing
    launch_id: uuid.UUID
    occurrence: datetime
    fired_at: datetime


def _occurrence_of(row: asyncpg.Record, occurrence: datetime) -> datetime | None:
    """The launch record's occurrence: set for a recurring run (each run's messages are its own; a date
    trigger's daily run also reads it as the instant it covers users from)."""
    kind, _ = campaign_rules.run_plan(row["type"], None, from_json(row["trigger"]))
    return occurrence if kind == "recurring" else None


class Scheduler:
    """Claims, fires and publishes due runs over the worker's shared clients."""

    def __init__(self, settings: Settings, clients: WorkerClients) -> None:
        self.settings = settings
        self.clients = clients

    # ── one tick ──────────────────────────────────────────────────────────────

    async def tick(self, now: datetime | None = None) -> list[Fired]:
        """Claim and fire what is due at ``now`` (default: the clock), publish it, and tidy up.

        Idle (nothing due), a tick is four indexed queries. When many campaigns are due at once,
        ``schedule_claimers`` transactions claim disjoint batches side by side (SKIP LOCKED hands each
        its own rows), each publishing its batch as soon as it committed, until nothing is due."""
        now = now or datetime.now(timezone.utc)
        fired: list[Fired] = []
        pool = await self.clients.postgres()
        if await pool.fetchval(_ANY_DUE, now):
            for batch in await asyncio.gather(*(self._claim_until_done(now)
                                                for _ in range(self.settings.schedule_claimers))):
                fired += batch
        await self.republish_stale()
        await self.expire(now)
        await self.settle_empty_runs()
        return fired

    async def _claim_until_done(self, now: datetime) -> list[Fired]:
        fired: list[Fired] = []
        while True:
            batch, claimed = await self._claim(now, None)
            await self.publish(batch)
            fired += batch
            if claimed < self.settings.schedule_claim_batch:
                return fired

    async def claim(self, now: datetime, only: Sequence[int] | None = None) -> list[Fired]:
        """Step 1: in one transaction, the due campaigns' run rows and new ``next_run_at`` (committed).
        ``only``: just these campaigns (a test's clock set ahead must not fire anybody else's)."""
        return (await self._claim(now, only))[0]

    async def _claim(self, now: datetime, only: Sequence[int] | None) -> tuple[list[Fired], int]:
        pool = await self.clients.postgres()
        fired: list[Fired] = []
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_DUE, now, self.settings.schedule_claim_batch, list(only) if only else None)
            for row in rows:
                one = await self._claim_one(conn, row, now)
                if one is not None:
                    fired.append(one)
        return fired, len(rows)

    async def _claim_one(self, conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> Fired | None:
        cid = row["campaign_id"]
        kind, schedule = campaign_rules.run_plan(row["type"], from_json(row["schedule"]) or None,
                                                 from_json(row["trigger"]))
        tick = plan.plan_due(kind, row["status"], row["next_run_at"], schedule, row["end_time"], now)
        if tick.skipped:
            await conn.executemany(_INSERT_RUN, [(cid, at, "skipped", why, None) for at, why in tick.skipped])
        if tick.missed_unrecorded:
            log.warning("missed occurrences not recorded", campaign_id=cid, count=tick.missed_unrecorded)
        if tick.fire is not None:
            launch_id = plan.run_launch_id(cid, tick.fire)
            run = await conn.fetchrow(_INSERT_RUN, cid, tick.fire, "fired", None, launch_id)
            if run is not None:
                after = await launches.fire(conn, row, launch_id, run["fired_at"], tick.next_run_at)
                return Fired(after, launch_id, tick.fire, run["fired_at"])
        if tick.complete:
            target = campaign_rules.transition(row["status"], "completed")
            after = await conn.fetchrow(
                "UPDATE campaigns SET status = $2, next_run_at = NULL, completed_at = clock_timestamp(),"
                " updated_at = clock_timestamp(), version = version + 1 WHERE campaign_id = $1 RETURNING *",
                cid, target)
            await audit.record(conn, None, "campaign.completed", "campaign", cid, launches.audit_view(row),
                               launches.audit_view(after))
            return None
        await conn.execute("UPDATE campaigns SET next_run_at = $2 WHERE campaign_id = $1", cid, tick.next_run_at)
        return None

    async def publish(self, fired: Sequence[Fired]) -> None:
        """Steps 2 and 3: every fired run's launch record, acknowledged, then the runs marked published.
        A record Kafka did not take stays ``fired`` and is re-published by a later tick."""
        if not fired:
            return
        producer = await self.clients.producer()
        results = await asyncio.gather(
            *(launches.publish_launch(producer, f.row, f.launch_id, f.fired_at, _occurrence_of(f.row, f.occurrence))
              for f in fired), return_exceptions=True)
        done = [f.launch_id for f, r in zip(fired, results) if not isinstance(r, BaseException)]
        for f, r in zip(fired, results):
            if isinstance(r, BaseException):
                log.warning("launch not acknowledged; a later tick publishes it again",
                            campaign_id=f.row["campaign_id"], launch_id=str(f.launch_id), error=str(r))
        if done:
            pool = await self.clients.postgres()
            await pool.execute(
                "UPDATE campaign_runs SET state = 'published', published_at = clock_timestamp()"
                " WHERE launch_id = ANY($1::uuid[]) AND state = 'fired'", done)

    async def republish_stale(self) -> int:
        """Runs committed as fired whose worker never marked them published (killed, or Kafka was down)."""
        pool = await self.clients.postgres()
        rows = await pool.fetch(
            "SELECT r.launch_id, r.occurrence, r.fired_at, c.* FROM campaign_runs r"
            " JOIN campaigns c USING (campaign_id)"
            " WHERE r.state = 'fired' AND r.fired_at <= clock_timestamp() - make_interval(secs => $1)"
            " ORDER BY r.fired_at LIMIT 100", self.settings.schedule_republish_after_s)
        if rows:
            log.info("re-publishing fired runs", runs=len(rows))
            await self.publish([Fired(r, r["launch_id"], r["occurrence"], r["fired_at"]) for r in rows])
        return len(rows)

    async def expire(self, now: datetime) -> int:
        """Campaigns still sending at their end time: an ``expire`` control record (acknowledged before the
        commit), so every stage drops their unsent messages as "expired"; the aggregate then completes them."""
        pool = await self.clients.postgres()
        if not await pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM campaigns WHERE end_time <= $1 AND expired_at IS NULL"
                " AND status IN ('active', 'paused'))", now):
            return 0
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM campaigns WHERE end_time <= $1 AND expired_at IS NULL AND status IN ('active', 'paused')"
                " ORDER BY end_time LIMIT 100 FOR UPDATE SKIP LOCKED", now)
            if not rows:
                return 0
            producer = await self.clients.producer()
            for row in rows:
                await conn.execute("UPDATE campaigns SET expired_at = $2 WHERE campaign_id = $1",
                                   row["campaign_id"], now)
                await audit.record(conn, None, "campaign.expired", "campaign", row["campaign_id"],
                                   {"status": row["status"]}, {"status": row["status"], "expired_at": now.isoformat()})
                control = CampaignControl(
                    control_id=uuid.uuid4(), campaign_id=row["campaign_id"], action="expire",
                    previous_status=row["status"], status="completed", launch_id=row["launch_id"], issued_at=now)
                await launches.publish(producer, CAMPAIGN_CONTROL.name, row["campaign_id"], control)
        log.info("campaigns reached their end time", campaigns=[r["campaign_id"] for r in rows])
        return len(rows)

    async def settle_empty_runs(self) -> int:
        """Runs whose launch explode skipped (no segment, superseded) or found with no recipients: nothing
        will ever be folded for them, so no event completes them; they complete (or skip) here."""
        pool = await self.clients.postgres()
        rows = await pool.fetch(
            "SELECT r.campaign_id, r.launch_id, a.state, a.reason FROM campaign_runs r"
            " JOIN launch_audiences a ON a.launch_id = r.launch_id"
            " WHERE r.state = 'published' AND (a.state = 'skipped' OR (a.state = 'done' AND a.size = 0)) LIMIT 100")
        redis = self.clients.redis()
        for r in rows:
            async with pool.acquire() as conn, conn.transaction():
                status = await finish_run(conn, redis, r["campaign_id"], r["launch_id"],
                                          skipped_reason=r["reason"] if r["state"] == "skipped" else None)
            if status in ("completed", "scheduled"):  # the run is over: its running status says so
                await set_campaign_status(redis, r["campaign_id"], "completed")
        return len(rows)


# ── a run's end (the aggregate's completion, and settle_empty_runs) ──────────


async def finish_run(conn: asyncpg.Connection, redis, campaign_id: int, launch_id: uuid.UUID | None,
                     skipped_reason: str | None = None) -> str | None:
    """The campaign's current run is over: its row completed with its counts (the counters' delta since it
    began), and an active campaign back to ``scheduled`` if it runs again, else ``completed``. Returns the
    campaign's status afterwards (None: no such campaign). Call inside a transaction."""
    row = await conn.fetchrow("SELECT * FROM campaigns WHERE campaign_id = $1 FOR UPDATE", campaign_id)
    if row is None:
        return None
    launch_id = launch_id or row["launch_id"]  # the aggregate completes whatever launch is current
    now = datetime.now(timezone.utc)
    if launch_id is not None and row["launch_id"] == launch_id:
        if skipped_reason is not None:
            await conn.execute(
                "UPDATE campaign_runs SET state = 'skipped', reason = $3, completed_at = $4"
                " WHERE campaign_id = $1 AND launch_id = $2 AND state IN ('fired', 'published')",
                campaign_id, launch_id, skipped_reason, now)
        else:
            await complete_run_row(conn, redis, campaign_id, launch_id, now)
    # A paused campaign completes only when its end time expired it (the aggregate says so by calling).
    if row["status"] not in ("active", "paused") or (launch_id is not None and row["launch_id"] != launch_id):
        return row["status"]
    if row["status"] == "paused" and row["expired_at"] is None:
        return row["status"]
    target = plan.after_run(None if row["expired_at"] else row["next_run_at"])
    campaign_rules.transition(row["status"], target)
    after = await conn.fetchrow(
        "UPDATE campaigns SET status = $2::varchar, updated_at = $3, version = version + 1,"
        " completed_at = CASE WHEN $2::varchar = 'completed' THEN $3 ELSE completed_at END,"
        " next_run_at = CASE WHEN $2::varchar = 'completed' THEN NULL ELSE next_run_at END"
        " WHERE campaign_id = $1 RETURNING *", campaign_id, target, now)
    action = "campaign.completed" if target == "completed" else "campaign.run_completed"
    await audit.record(conn, None, action, "campaign", campaign_id, launches.audit_view(row),
                       launches.audit_view(after))
    return target


async def complete_run_row(conn: asyncpg.Connection, redis, campaign_id: int, launch_id: uuid.UUID,
                           now: datetime) -> None:
    """The run of ``launch_id`` completed, with its counts and audience (no-op for a launch without a run row)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(metrics_key(campaign_id))
        pipe.hgetall(run_base_key(campaign_id))
        pipe.get(audience_key(campaign_id))
        totals, base, audience = await pipe.execute()
    counts = plan.run_counts(_numbers(totals), _numbers(base))
    await conn.execute(
        "UPDATE campaign_runs SET state = 'completed', completed_at = $3, counts = $4::jsonb, audience_size = $5"
        " WHERE campaign_id = $1 AND launch_id = $2 AND state IN ('fired', 'published')",
        campaign_id, launch_id, now, to_json(counts), int(audience) if audience is not None else None)


def _numbers(raw: dict) -> dict[str, float]:
    out = {}
    for k, v in (raw or {}).items():
        value = float(v)
        out[k.decode() if isinstance(k, bytes) else k] = int(value) if value.is_integer() else value
    return out


async def live_run_counts(redis, campaign_id: int) -> dict[str, float]:
    """The counts of the run now sending (the totals minus its base), for the runs API."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(metrics_key(campaign_id))
        pipe.hgetall(run_base_key(campaign_id))
        totals, base = await pipe.execute()
    return plan.run_counts(_numbers(totals), _numbers(base))


# ── one tick from the command line (tests: two schedulers at once, one SIGKILLed mid-firing) ──


async def main(argv: Sequence[str], settings: Settings) -> None:
    """``--forever``: the stage alone, ticking on the clock (bench/schedule.py measures it).
    ``--once [--now ISO] [--pause-before-publish S] [--campaign ID ...]``: one tick in this process over
    clients of its own.
    Prints ``{"committed": [...]}`` once the fired runs are committed, then ``{"published": [...]}``
    (launch ids); ``--pause-before-publish`` waits between the two (a test kills it there)."""
    parser = argparse.ArgumentParser(description="Run the scheduler once")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="claim and publish once, then exit")
    mode.add_argument("--forever", action="store_true",
                      help="tick every schedule_tick_s until killed (the stage alone; not --loop: Faust reads that)")
    parser.add_argument("--now", type=datetime.fromisoformat, default=None, help="the tick's clock (ISO, UTC)")
    parser.add_argument("--pause-before-publish", type=float, default=0.0)
    parser.add_argument("--campaign", type=int, action="append", help="only this campaign (repeatable)")
    args = parser.parse_args(argv)
    now = plan.utc(args.now) if args.now else datetime.now(timezone.utc)
    clients = WorkerClients(settings)
    scheduler = Scheduler(settings, clients)
    if args.forever:
        try:
            while True:
                await scheduler.tick()
                await asyncio.sleep(settings.schedule_tick_s)
        finally:
            await clients.close()
    try:
        fired = await scheduler.claim(now, args.campaign)
        print(orjson.dumps({"committed": [str(f.launch_id) for f in fired]}).decode(), flush=True)
        if args.pause_before_publish:
            await asyncio.sleep(args.pause_before_publish)
        await scheduler.publish(fired)
        print(orjson.dumps({"published": [str(f.launch_id) for f in fired]}).decode(), flush=True)
    finally:
        await clients.close()

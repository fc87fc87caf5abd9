"""The aggregate stage on the real stack: delivery events → Redis counters, Cassandra message_log, completion."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import uuid
from datetime import datetime, timezone

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from pipeline import metrics
from pipeline.aggregate_io import Completion, Folder, HourlyMetrics
from pipeline.worker_clients import WorkerClients
from schemas import keys
from pipeline.stores.cassandra import connect, run_async
from schemas.messages import DeliveryEvent, DeliveryEventBatch, message_id
from schemas.encoding import encode
from tests.helpers.kafka import eventually, produce


def _campaign_id() -> int:
    return random.randrange(9 * 10**15, 10**16)


def _user_id() -> int:
    return random.randrange(10**12, 2 * 10**12)


def _event(cid: int, user: int, status: str, channel: str = "email", variant: str | None = "A",
           reason: str | None = None, cost: float = 0.0, at: datetime | None = None) -> DeliveryEvent:
    return DeliveryEvent(message_id=message_id(cid, user, channel), campaign_id=cid, user_id=user, channel=channel,
                         variant=variant, status=status, reason=reason, cost=cost,
                         at=at or datetime.now(timezone.utc))


async def _hash(pipeline_redis, key: str) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in (await pipeline_redis.hgetall(key)).items()}


async def _forget(pipeline_redis, cid: int) -> None:
    found = [k async for k in pipeline_redis.scan_iter(keys.campaign_pattern(cid), count=10_000)]
    if found:
        await pipeline_redis.delete(*found)
    await pipeline_redis.srem(keys.OPEN_CAMPAIGNS, cid)


async def test_the_redis_fold_counts_exactly_what_the_pure_fold_counts(pipeline_redis):
    """The Lua script and pipeline.metrics.fold are one rule: random batches, replays included."""
    cid = _campaign_id()
    rng = random.Random(cid)
    users = [_user_id() for _ in range(40)]
    statuses = ["queued", "sent", "delivered", "bounced", "failed", "suppressed", "deferred", "held", "cancelled",
                "opened", "machine", "clicked", "converted", "complained", "unsubscribed"]
    batches = []
    for _ in range(12):
        batch = []
        for _ in range(rng.randrange(1, 60)):
            status = rng.choice(statuses)
            event = _event(cid, rng.choice(users), "opened" if status == "machine" else status,
                           channel=rng.choice(["email", "sms"]), variant=rng.choice(["A", "B", None]),
                           reason=rng.choice(["unsubscribed", "duplicate"]) if status == "suppressed" else None,
                           cost=0.0075 if status == "sent" else 0.0)
            batch.append(event.model_copy(update={"machine": status == "machine",
                                                  "revenue": 12.5 if status == "converted" else 0.0}))
        batches.append(batch)
    batches += batches[:5]  # a replay of the first five
    folder = Folder(pipeline_redis)
    seen: dict[uuid.UUID, int] = {}
    want: dict[str, dict[str, float]] = {}
    try:
        for batch in batches:
            await folder.fold(batch)
            for key, fields in metrics.fold(metrics.collapse(batch), seen).items():
                for f, v in fields.items():
                    want.setdefault(key, {}).setdefault(f, 0.0)
                    want[key][f] += v
        for key, fields in want.items():
            got = await _hash(pipeline_redis, key)
            assert set(got) == set(fields), key
            for f, v in fields.items():
                assert got[f] == pytest.approx(v), (key, f)
        assert await pipeline_redis.sismember(keys.OPEN_CAMPAIGNS, cid)
        ttl = await pipeline_redis.ttl(keys.seen_key(cid, metrics.seen_shard(batches[0][0].message_id)))
        assert 0 < ttl <= metrics.SEEN_TTL_S
    finally:
        await _forget(pipeline_redis, cid)


async def test_changed_hours_are_copied_to_cassandra_as_absolute_counts(settings, pipeline_redis):
    cid = _campaign_id()
    folder = Folder(pipeline_redis)
    clients = WorkerClients(settings)
    hourly = HourlyMetrics(pipeline_redis, clients, settings.cassandra_keyspace, per_flush=10_000)
    at = datetime.now(timezone.utc)
    try:
        await folder.fold([_event(cid, u, "sent", cost=0.5, at=at) for u in range(5)] + [
            _event(cid, 1, "delivered", at=at), _event(cid, 2, "sent", channel="sms", variant="B", at=at)])
        await hourly.flush()
        await folder.fold([_event(cid, u, "delivered", at=at) for u in range(2, 4)])  # the same hour changes again
        await hourly.flush()
        await hourly.flush()  # nothing changed: nothing written twice
        session = await clients.cassandra()
        rows = await run_async(session, f"SELECT hour, channel, variant, metric, value FROM "
                               f"{settings.cassandra_keyspace}.campaign_metrics WHERE campaign_id = %s AND date = %s",
                               (cid, at.date()))
        got = {(r.channel, r.variant, r.metric): r.value for r in rows}
        assert got == {("email", "A", "sent"): 5, ("email", "A", "delivered"): 3,
                       ("email", "A", "budget_spent_micros"): 2_500_000, ("sms", "B", "sent"): 1}
        assert {r.hour for r in rows} == {at.hour}
    finally:
        await clients.close()
        await _forget(pipeline_redis, cid)


async def test_a_seen_bucket_stays_in_the_compact_encoding(pipeline_redis):
    cid = _campaign_id()
    folder = Folder(pipeline_redis)
    try:
        await folder.fold([_event(cid, u, "sent") for u in range(2000)])
        key = keys.seen_key(cid, metrics.seen_shard(message_id(cid, 0, "email")))
        assert await pipeline_redis.object("encoding", key) in (b"listpack", b"ziplist")
    finally:
        await _forget(pipeline_redis, cid)


async def _insert_campaign(dsn: str, cid: int, status: str = "active") -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO campaigns (campaign_id, name, status, channels, launched_at) VALUES ($1, $2, $3, $4, now())",
            cid, f"aggregate-test-{cid}", status, ["email"])
    finally:
        await conn.close()


async def _campaign(dsn: str, cid: int):
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT status, completed_at FROM campaigns WHERE campaign_id = $1", cid)
        audit = await conn.fetch("SELECT actor, action FROM audit_log WHERE entity_type = 'campaign'"
                                 " AND entity_id = $1 ORDER BY audit_id", str(cid))
        return row, audit
    finally:
        await conn.close()


async def _delete_campaign(dsn: str, cid: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM campaigns WHERE campaign_id = $1", cid)
    finally:
        await conn.close()


async def test_completion_marks_an_active_campaign_completed_once_every_message_has_an_outcome(settings, pipeline_redis):
    cid = _campaign_id()
    await _insert_campaign(settings.postgres_dsn, cid)
    resources = WorkerClients(settings)
    folder, completion = Folder(pipeline_redis), Completion(pipeline_redis, resources)
    try:
        await pipeline_redis.set(keys.status_key(cid), "active")
        await pipeline_redis.set(keys.expected_key(cid), 3)
        await folder.fold([_event(cid, 1, "sent"), _event(cid, 2, "queued"), _event(cid, 3, "held")])
        assert await completion.check({cid}) == []
        await folder.fold([_event(cid, 2, "sent"), _event(cid, 3, "cancelled"), _event(cid, 1, "delivered")])
        assert await completion.check({cid}) == [cid]
        assert await completion.check({cid}) == []  # once
        row, audit = await _campaign(settings.postgres_dsn, cid)
        assert row["status"] == "completed" and row["completed_at"] is not None
        assert [(a["actor"], a["action"]) for a in audit] == [("herald", "campaign.completed")]
        assert await pipeline_redis.get(keys.status_key(cid)) == b"completed"
        assert not await pipeline_redis.sismember(keys.OPEN_CAMPAIGNS, cid)
    finally:
        await resources.close()
        await _forget(pipeline_redis, cid)
        await _delete_campaign(settings.postgres_dsn, cid)


async def test_a_paused_campaign_is_not_completed_even_when_every_message_is_accounted(settings, pipeline_redis):
    cid = _campaign_id()
    await _insert_campaign(settings.postgres_dsn, cid, status="paused")
    resources = WorkerClients(settings)
    folder, completion = Folder(pipeline_redis), Completion(pipeline_redis, resources)
    try:
        await pipeline_redis.set(keys.status_key(cid), "paused")
        await pipeline_redis.set(keys.expected_key(cid), 1)
        await folder.fold([_event(cid, 1, "sent")])
        assert cid not in await completion.sweep()
        row, _ = await _campaign(settings.postgres_dsn, cid)
        assert row["status"] == "paused"
        assert await pipeline_redis.sismember(keys.OPEN_CAMPAIGNS, cid)  # decided later, on resume
    finally:
        await resources.close()
        await _forget(pipeline_redis, cid)
        await _delete_campaign(settings.postgres_dsn, cid)


async def test_a_campaign_gone_from_postgres_is_forgotten_once_its_messages_are_accounted(settings, pipeline_redis):
    """Its id would otherwise stay in the open set, and every sweep would try to complete it again."""
    cid = _campaign_id()
    resources = WorkerClients(settings)
    folder, completion = Folder(pipeline_redis), Completion(pipeline_redis, resources)
    try:
        await pipeline_redis.set(keys.expected_key(cid), 1)
        await folder.fold([_event(cid, 1, "sent")])
        assert await pipeline_redis.sismember(keys.OPEN_CAMPAIGNS, cid)
        assert cid not in await completion.sweep()
        assert not await pipeline_redis.sismember(keys.OPEN_CAMPAIGNS, cid)
    finally:
        await resources.close()
        await _forget(pipeline_redis, cid)


async def _log_rows(session, keyspace: str, cid: int, day, shards) -> list:
    rows = []
    for shard in shards:
        rows += list(await run_async(session, f"SELECT * FROM {keyspace}.message_log WHERE campaign_id = %s"
                                              " AND day = %s AND shard = %s", (cid, day, shard)))
    return rows


async def test_events_on_kafka_reach_counters_message_log_and_completion_through_the_worker(settings, pipeline_redis,
                                                                                            worker):
    """Produced twice (a replay): counted once; every status in message_log; the campaign completes."""
    cid = _campaign_id()
    await _insert_campaign(settings.postgres_dsn, cid)
    users = [_user_id() for _ in range(30)]
    now = datetime.now(timezone.utc)
    events = []
    for n, u in enumerate(users):
        if n < 20:
            events += [_event(cid, u, "queued", at=now), _event(cid, u, "sent", cost=0.001, variant="B", at=now)]
        elif n < 25:
            events.append(_event(cid, u, "suppressed", reason="frequency_cap", at=now))
        else:
            events.append(_event(cid, u, "failed", reason="550 no such user", at=now))
    batches = [DeliveryEventBatch(events=events[i:i + 7]) for i in range(0, len(events), 7)]
    records = [(str(cid).encode(), encode(b)) for b in batches]
    try:
        await pipeline_redis.set(keys.status_key(cid), "active")
        await pipeline_redis.set(keys.expected_key(cid), len(users))
        await produce(settings.kafka_brokers, "delivery-events", records + records + [(b"x", b"{not json")])

        async def completed():
            row, _ = await _campaign(settings.postgres_dsn, cid)
            return row["status"] == "completed"

        await eventually(completed, timeout_s=60)
        totals = await _hash(pipeline_redis, keys.metrics_key(cid))
        assert totals["sent"] == 20 and totals["queued"] == 20
        assert totals["suppressed"] == 5 and totals["suppressed:frequency_cap"] == 5
        assert totals["failed"] == 5 and totals[metrics.ACCOUNTED] == 30
        assert totals["budget_spent"] == pytest.approx(0.02)
        assert await pipeline_redis.get(keys.status_key(cid)) == b"completed"

        _, session = connect(settings)
        try:
            wanted = [e for e in events if e.status != "queued"]  # the transient queued is not logged

            async def logged():
                rows = await _log_rows(session, settings.cassandra_keyspace, cid, now.date(),
                                       sorted({u % 64 for u in users}))
                return rows if len(rows) >= len(wanted) else None

            rows = await eventually(logged, timeout_s=60)
            await asyncio.sleep(1.0)  # nothing more arrives (no queued rows after all)
            rows = await logged()
        finally:
            session.cluster.shutdown()
        assert len(rows) == len(wanted)  # a row per message and outcome; the replay rewrote the same rows
        by_status: dict[str, int] = {}
        for r in rows:
            by_status[r.status] = by_status.get(r.status, 0) + 1
        assert by_status == {"sent": 20, "suppressed": 5, "failed": 5}
        assert {r.error_message for r in rows if r.status == "failed"} == {"550 no such user"}
    finally:
        await _forget(pipeline_redis, cid)
        await _delete_campaign(settings.postgres_dsn, cid)


async def test_a_worker_killed_while_folding_changes_no_count(settings, pipeline_redis, workers, default_providers):
    """Events produced while the worker is SIGKILLed and restarted: every (message, status) counted exactly
    once, per minute and hour too (the replayed tail of the dead worker's batches is recognised)."""
    cid = _campaign_id()
    users = [_user_id() for _ in range(3000)]
    now = datetime.now(timezone.utc)
    statuses = ("sent", "delivered", "opened", "clicked")
    expected = {s: 0 for s in statuses}
    records = []
    for i in range(0, len(users), 30):
        batch = []
        for n, u in enumerate(users[i:i + 30]):
            for s in statuses[:1 + (i + n) % 4]:
                batch.append(_event(cid, u, s, variant="A", at=now))
                expected[s] += 1
        records.append((str(cid).encode(), encode(DeliveryEventBatch(events=batch))))
    proc = workers.ensure(default_providers)
    try:
        await produce(settings.kafka_brokers, "delivery-events", records[:50])
        await eventually(lambda: _hash(pipeline_redis, keys.metrics_key(cid)), timeout_s=60)  # folding has begun
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        await produce(settings.kafka_brokers, "delivery-events", records[50:] + records[:20])  # and a replay
        workers.ensure(default_providers)

        async def folded():
            totals = await _hash(pipeline_redis, keys.metrics_key(cid))
            return totals if all(totals.get(s, 0) >= n for s, n in expected.items()) else None

        totals = await eventually(folded, timeout_s=120)
        await asyncio.sleep(2.0)
        totals = await _hash(pipeline_redis, keys.metrics_key(cid))
        assert {s: totals.get(s, 0) for s in statuses} == expected
        minute = int(now.timestamp() // 60)
        series = await _hash(pipeline_redis, keys.minute_metrics_key(cid, minute))
        assert {s: series.get(f"email:A:{s}", 0) for s in statuses} == expected
    finally:
        await _forget(pipeline_redis, cid)


async def test_a_malformed_delivery_event_goes_to_dead_letters_with_its_reason(settings, worker):
    from tests.helpers.kafka import end_offsets, read_from

    start = await end_offsets(settings.kafka_brokers, "dead-letters")
    marker = f"bad-{uuid.uuid4()}".encode()
    await produce(settings.kafka_brokers, "delivery-events", [(marker, orjson.dumps({"events": [{"status": 1}]}))])

    def found(records):
        return [r for r in records if r.get("source_topic") == "delivery-events" and r.get("stage") == "aggregate"
                and r.get("key") and base64.b64decode(r["key"]) == marker]

    records = await read_from(settings.kafka_brokers, start, lambda rs: bool(found(rs)), timeout_s=60)
    assert "events.0" in found(records)[0]["reason"]

"""The explode and control stages on the real stack: a real worker, Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import DELIVERY_EVENTS, MESSAGE_REQUESTS, OUTBOX
from pipeline.explode import assign_variants
from pipeline.partitioning import user_partitions
from schemas.keys import held_key, status_key
from schemas.campaigns import CampaignControl, campaign_key
from schemas.encoding import encode
from schemas.topics import CAMPAIGN_CONTROL
from config.settings import REPO_ROOT as REPO
from tests.helpers.kafka import end_offsets, eventually, produce
from tests.helpers.pipeline import PipelineCampaign
from tests.helpers.kafka import read_campaign_range


async def _launch_state(campaign: PipelineCampaign, launch_id: uuid.UUID):
    return await campaign.pool.fetchrow(
        "SELECT state, next_chunk, chunks, size FROM launch_audiences WHERE launch_id = $1", launch_id)


async def _done(campaign: PipelineCampaign, launch_id: uuid.UUID, timeout_s: float = 90.0):
    async def check():
        row = await _launch_state(campaign, launch_id)
        return row if row is not None and row["state"] == "done" else None
    return await eventually(check, timeout_s=timeout_s)


def _recipients(records: list[tuple[int, dict]]) -> list[tuple[int, dict, dict]]:
    return [(p, batch, r) for p, batch in records for r in batch["recipients"]]


def _assert_each_user_once_on_its_partition(campaign: PipelineCampaign, records: list[tuple[int, dict]]) -> None:
    got = _recipients(records)
    counts = Counter(r["user_id"] for _, _, r in got)
    duplicates = {u: n for u, n in counts.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} users emitted more than once"
    assert set(counts) == set(campaign.user_ids)
    ids = np.array([r["user_id"] for _, _, r in got], dtype=np.int64)
    partitions = np.array([p for p, _, _ in got])
    assert (user_partitions(ids, MESSAGE_REQUESTS.partitions) == partitions).all()
    assert all(batch["partition"] == p for p, batch in records)


async def test_a_launch_emits_every_user_once_on_its_partition_with_its_variant_and_language(
        make_campaign, worker, pipeline_redis):
    campaign = await make_campaign(users=5000, channels=["email", "push"], variants=[("A", 70), ("B", 30)])
    start = await campaign.launch()
    launch = campaign.launches[0]
    await _done(campaign, launch.launch_id)
    records = await read_campaign_range(campaign.settings, start, campaign.campaign_id)

    _assert_each_user_once_on_its_partition(campaign, records)
    ids = np.array(campaign.user_ids, dtype=np.int64)
    expected_variant = dict(zip(campaign.user_ids, assign_variants(campaign.campaign_id, ids, campaign.variants)))
    for _, batch, r in _recipients(records):
        assert r["variant"] == expected_variant[r["user_id"]]
        assert r["language"] == campaign.languages[r["user_id"]]
    for _, batch in records:
        assert len(batch["recipients"]) <= 500
        assert batch["launch_id"] == str(launch.launch_id) and batch["channel"] is None
        assert batch["batch_id"].startswith(f"{launch.launch_id}:")
        assert batch["category"] == "promotional" and batch["transactional"] is False
    assert len({b["batch_id"] for _, b in records}) == len(records)

    assert int(await pipeline_redis.get(f"campaign:{campaign.campaign_id}:expected")) == 10_000
    assert int(await pipeline_redis.get(f"campaign:{campaign.campaign_id}:audience")) == 5000
    assert (await pipeline_redis.get(status_key(campaign.campaign_id))) == b"active"


async def _committed(settings, record_partition: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, group_id=f"{settings.app_id}.explode",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition("campaign-launches", record_partition)) or -1
    finally:
        await consumer.stop()


async def test_the_same_launch_delivered_again_emits_nothing_new(make_campaign, worker):
    campaign = await make_campaign(users=2000)
    await campaign.launch()
    launch = campaign.launches[0]
    await _done(campaign, launch.launch_id)

    after_first = await end_offsets(campaign.settings.kafka_brokers, MESSAGE_REQUESTS.name)
    where = await campaign.publish(launch)  # a producer retry, a replay: the same launch_id
    await eventually(lambda: _is_past(campaign.settings, where), timeout_s=60)
    again = await read_campaign_range(campaign.settings, after_first, campaign.campaign_id)
    assert again == []


async def _is_past(settings, where) -> bool:
    return await _committed(settings, where.partition) > where.offset


async def test_a_worker_killed_mid_launch_resumes_without_losing_or_repeating_anyone(make_campaign, worker, tmp_path):
    campaign = await make_campaign(users=30_000, channels=["sms"])
    launch = campaign.launch_record()
    start = await end_offsets(campaign.settings.kafka_brokers, MESSAGE_REQUESTS.name)
    await campaign.commit_launch(launch)
    path = tmp_path / "launch.json"
    path.write_bytes(encode(launch))
    # One chunk (≤ 8 × 500 users) per window, a pause between its acknowledgement and its checkpoint.
    proc = subprocess.Popen([sys.executable, "-m", "agents.explode", "--launch-file", str(path), "--pace-s", "0.4",
                             "--window", "4000"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async def midway():
            row = await _launch_state(campaign, launch.launch_id)
            return row is not None and row["next_chunk"] >= 2
        await eventually(midway, timeout_s=60, every_s=0.05)
        await asyncio.sleep(0.2)  # into the next window: sent, maybe acknowledged, not checkpointed
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    row = await _launch_state(campaign, launch.launch_id)
    assert row["state"] == "exploding" and 2 <= row["next_chunk"] < row["chunks"]
    before = await read_campaign_range(campaign.settings, start, campaign.campaign_id)
    assert 0 < len(_recipients(before)) < 30_000
    # The killed process had sent (and Kafka acknowledged) a window it never checkpointed.
    assert max(int(b["batch_id"].split(":")[1]) for _, b in before) >= row["next_chunk"]

    campaign.launches.append(launch)
    await campaign.publish(launch)  # the record comes back (its offset was never committed): a worker resumes
    await _done(campaign, launch.launch_id)
    records = await read_campaign_range(campaign.settings, start, campaign.campaign_id)
    _assert_each_user_once_on_its_partition(campaign, records)


async def test_a_dynamic_segment_is_evaluated_in_the_workers_live_store_with_each_users_language(
        make_campaign, worker, pipeline_pool):
    token = uuid.uuid4().hex
    base = random.randrange(10**12, 9 * 10**15)
    users = {base + i: ("es", "pt", "en")[i % 3] for i in range(30)}
    profiles = [(str(u).encode(), orjson.dumps({"user_id": u, "language": lang, "email": f"d{u}@example.test",
                                                "attributes": {"segment_probe": token},
                                                "updated_at": datetime.now(timezone.utc).isoformat()}))
                for u, lang in users.items()]
    campaign = await make_campaign(users=0, channels=["email"])
    try:
        await produce(campaign.settings.kafka_brokers, "user-profiles", profiles)
        criteria = {"conditions": [{"field": "segment_probe", "operator": "equals", "value": token}], "logic": "AND"}
        await pipeline_pool.execute("UPDATE segments SET kind = 'dynamic', dynamic = true, criteria = $2::jsonb"
                                    " WHERE segment_id = $1", campaign.segment_id, orjson.dumps(criteria).decode())
        start = await campaign.launch()
        await _done(campaign, campaign.launches[0].launch_id)
        records = await read_campaign_range(campaign.settings, start, campaign.campaign_id)
        got = {r["user_id"]: r["language"] for _, _, r in _recipients(records)}
        assert got == users
        assert len(_recipients(records)) == len(users)
    finally:
        await pipeline_pool.execute("DELETE FROM users WHERE user_id = ANY($1::bigint[])", list(users))


# ---------------------------------------------------------------- control


def _held_batch(campaign: PipelineCampaign, partition: int, users: list[int], channel: str | None) -> dict:
    return {
        "batch_id": f"{uuid.uuid4()}:0:{partition}" + (f":{channel}" if channel else ""),
        "campaign_id": campaign.campaign_id, "launch_id": None, "step": "send", "channel": channel,
        "partition": partition, "category": "promotional", "transactional": False,
        "recipients": [{"user_id": u, "variant": None, "language": "en"} for u in users],
        "launched_at": datetime.now(timezone.utc).isoformat(), "attempt": 0,
    }


async def _control(campaign: PipelineCampaign, action: str, previous: str, status: str) -> None:
    record = CampaignControl(control_id=uuid.uuid4(), campaign_id=campaign.campaign_id, action=action,
                             previous_status=previous, status=status, launch_id=None,
                             issued_at=datetime.now(timezone.utc))
    await produce(campaign.settings.kafka_brokers, CAMPAIGN_CONTROL.name, [(campaign_key(campaign.campaign_id), encode(record))])


async def _status_is(redis, campaign_id: int, status: bytes):
    async def check():
        return await redis.get(status_key(campaign_id)) == status
    await eventually(check, timeout_s=60)


async def test_pause_then_resume_sends_the_held_batches_back_to_their_topic_and_partition(
        make_campaign, worker, pipeline_redis):
    campaign = await make_campaign(users=10, channels=["email"])
    await _control(campaign, "pause", "active", "paused")
    await _status_is(pipeline_redis, campaign.campaign_id, b"paused")

    users = campaign.user_ids
    requests, email = _held_batch(campaign, 3, users[:4], None), _held_batch(campaign, 5, users[4:], "email")
    await pipeline_redis.rpush(held_key(campaign.campaign_id), orjson.dumps(requests), orjson.dumps(email))
    start_requests = await end_offsets(campaign.settings.kafka_brokers, MESSAGE_REQUESTS.name)
    start_email = await end_offsets(campaign.settings.kafka_brokers, OUTBOX["email"].name)

    await _control(campaign, "resume", "paused", "active")
    await _status_is(pipeline_redis, campaign.campaign_id, b"active")
    await eventually(lambda: _empty(pipeline_redis, held_key(campaign.campaign_id)), timeout_s=30)

    # Only the held batches themselves are asserted on: the gate may already be passing them on.
    back = await read_campaign_range(campaign.settings, start_requests, campaign.campaign_id)
    assert [(p, b["batch_id"]) for p, b in back] == [(3, requests["batch_id"])]
    sent = await read_campaign_range(campaign.settings, start_email, campaign.campaign_id)
    resent = [(p, b) for p, b in sent if b["batch_id"] == email["batch_id"]]
    assert [p for p, _ in resent] == [5]
    assert resent[0][1]["recipients"] == email["recipients"]


async def _empty(redis, key: str) -> bool:
    return await redis.llen(key) == 0


async def test_cancel_drops_the_held_batches_and_counts_each_message_cancelled(make_campaign, worker, pipeline_redis):
    campaign = await make_campaign(users=5, channels=["email", "push"])
    await _control(campaign, "pause", "active", "paused")
    await _status_is(pipeline_redis, campaign.campaign_id, b"paused")
    held = _held_batch(campaign, 2, campaign.user_ids[:3], None)
    await pipeline_redis.rpush(held_key(campaign.campaign_id), orjson.dumps(held))
    start = await end_offsets(campaign.settings.kafka_brokers, DELIVERY_EVENTS.name)

    await _control(campaign, "cancel", "paused", "cancelled")
    await _status_is(pipeline_redis, campaign.campaign_id, b"cancelled")
    await eventually(lambda: _empty(pipeline_redis, held_key(campaign.campaign_id)), timeout_s=30)

    async def cancelled_events():
        found = await _events(campaign, start)
        return found if len(found) >= 6 else None
    events = await eventually(cancelled_events, timeout_s=30)
    assert sorted((e["user_id"], e["channel"]) for p, e in events) == sorted(
        (u, ch) for u in campaign.user_ids[:3] for ch in ("email", "push"))
    assert all(p == 2 and e["status"] == "cancelled" and e["reason"] == "cancelled" for p, e in events)


async def _events(campaign: PipelineCampaign, start: dict) -> list[tuple[int, dict]]:
    """Delivery events of the campaign between ``start`` and the end of delivery-events."""
    end = await end_offsets(campaign.settings.kafka_brokers, DELIVERY_EVENTS.name)
    out = []
    consumer = AIOKafkaConsumer(bootstrap_servers=campaign.settings.kafka_brokers, group_id=None)
    await consumer.start()
    try:
        todo = {tp: o for tp, o in start.items() if end[tp] > o}
        consumer.assign(list(todo))
        for tp, o in todo.items():
            consumer.seek(tp, o)
        while todo:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset >= end[tp]:
                        continue
                    if m.offset == end[tp] - 1:
                        todo.pop(tp, None)
                    value = orjson.loads(m.value)
                    out += [(tp.partition, e) for e in value.get("events", ())
                            if e.get("campaign_id") == campaign.campaign_id]
        return out
    finally:
        await consumer.stop()

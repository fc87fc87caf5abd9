"""Conversions end to end: purchases on user-events after a campaign's messages count for it (last touch, within
its window, once per user), with their revenue, in the live counters per channel and variant."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.partitioning import user_key
from schemas import keys
from schemas.topics import USER_EVENTS


async def _hash(redis, key: str) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in (await redis.hgetall(key)).items()}


async def _until(redis, key: str, want: dict[str, float], timeout_s: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    got: dict[str, float] = {}
    while time.monotonic() < deadline:
        got = await _hash(redis, key)
        if all(abs(got.get(k, 0) - v) < 1e-9 for k, v in want.items()):
            return got
        await asyncio.sleep(0.25)
    raise AssertionError(f"{key}: wanted {want}, have {got}")


async def test_purchases_after_a_campaign_count_once_per_user_with_their_revenue(
        make_campaign, pipeline_pool, pipeline_redis, worker, settings):
    c = await make_campaign(users=6, channels=("email",), variants=[("A", 50.0), ("B", 50.0)])
    await pipeline_pool.execute(
        "UPDATE campaigns SET goals = $2::jsonb WHERE campaign_id = $1", c.campaign_id,
        orjson.dumps({"conversion_events": ["purchase", "upgrade"], "attribution_window_days": 7}).decode())
    await c.launch()
    await _until(pipeline_redis, keys.metrics_key(c.campaign_id), {"sent": 6})
    await asyncio.sleep(2.0)  # the touches consumer records the sends

    now = datetime.now(timezone.utc)
    u = c.user_ids
    twice = {"event_id": str(uuid.uuid4()), "user_id": u[0], "name": "purchase", "occurred_at": now.isoformat(),
             "revenue": "19.99"}
    events = [
        twice, twice,  # a replayed upstream record
        {"user_id": u[0], "name": "purchase", "occurred_at": now.isoformat(), "revenue": "500"},  # converted already
        {"user_id": u[1], "name": "upgrade", "occurred_at": now.isoformat(), "revenue": "80.01"},
        {"user_id": u[2], "name": "product_viewed", "occurred_at": now.isoformat()},  # not a goal
        {"user_id": u[3], "name": "purchase", "occurred_at": (now - timedelta(hours=1)).isoformat(),
         "revenue": "5"},  # before the message
        {"user_id": u[4], "name": "purchase", "occurred_at": now.isoformat()},  # no revenue: still a conversion
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, acks="all")
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(USER_EVENTS.name, orjson.dumps(e), key=user_key(e["user_id"]))
    finally:
        await producer.stop()

    totals = await _until(pipeline_redis, keys.metrics_key(c.campaign_id), {"converted": 3, "revenue": 100.0})
    await asyncio.sleep(3.0)
    assert (await _hash(pipeline_redis, keys.metrics_key(c.campaign_id)))["converted"] == 3, totals
    by_variant = {}
    for variant in ("A", "B"):
        got = await _hash(pipeline_redis, keys.variant_metrics_key(c.campaign_id, "email", variant))
        by_variant[variant] = (got.get("converted", 0), got.get("revenue", 0))
    assert sum(v[0] for v in by_variant.values()) == 3
    assert abs(sum(v[1] for v in by_variant.values()) - 100.0) < 1e-9
    channel = await _hash(pipeline_redis, keys.channel_metrics_key(c.campaign_id, "email"))
    assert channel["converted"] == 3
    for uid in u:
        await pipeline_redis.delete(keys.touch_key(uid))

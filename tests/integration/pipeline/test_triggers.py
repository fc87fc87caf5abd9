"""Triggered campaigns end to end: topic rules (name, property filters), re-entry policies, dedup keys,
replayed events, entry limits and a rule on a topic of flat JSON records — real Kafka, PostgreSQL, Redis,
a real worker (controllable clock) and recording provider peers."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from config import Settings
from schemas.keys import FLOWS_CHANGED, flow_progress_key
from schemas.topics import DEAD_LETTERS
from tests.helpers.e2e import redis_hash
from tests.helpers.journeys import DAY, Providers, advance_clock, fresh_ids, send_events, until
from tests.helpers.kafka import end_offsets, produce, read
from tests.helpers.pipeline import DEFAULT_CONTENT, insert_users


@pytest.fixture
async def triggered(pipeline_pool, pipeline_redis):
    """A factory of active event-triggered email campaigns; removes them afterwards."""
    made: list[int] = []

    async def make(trigger: dict[str, Any], segment_id: int | None = None) -> int:
        campaign_id = await pipeline_pool.fetchval(
            "INSERT INTO campaigns (name, type, status, channels, segment_id, content, trigger)"
            " VALUES ($1, 'triggered', 'active', $2, $3, $4::jsonb, $5::jsonb) RETURNING campaign_id",
            f"test-trigger-{secrets.token_hex(3)}", ["email"], segment_id,
            orjson.dumps({"email": DEFAULT_CONTENT["email"]}).decode(), orjson.dumps(trigger).decode())
        made.append(campaign_id)
        await pipeline_redis.incr(FLOWS_CHANGED)
        return campaign_id

    yield make
    for campaign_id in made:
        await pipeline_pool.execute("DELETE FROM campaigns WHERE campaign_id = $1", campaign_id)
        keys = [k async for k in pipeline_redis.scan_iter(f"flow:c{campaign_id}:*")]
        keys += [k async for k in pipeline_redis.scan_iter(f"campaign:{campaign_id}:*")]
        if keys:
            await pipeline_redis.delete(*keys)
    await pipeline_redis.incr(FLOWS_CHANGED)


async def _users(pool, n: int) -> list[int]:
    ids = fresh_ids(n)
    async with pool.acquire() as conn:
        await insert_users(conn, ids, lambda u: "en")
    return ids


async def _counts(settings: Settings, campaign_id: int) -> dict[str, float]:
    return await redis_hash(settings, flow_progress_key(f"c{campaign_id}"))


async def _settled(settings: Settings, campaign_id: int, handled: int) -> None:
    """Wait until the campaign's rule has decided ``handled`` events (entered or refused)."""
    async def done():
        counts = await _counts(settings, campaign_id)
        return sum(v for k, v in counts.items() if k == "entered" or k.startswith("refused:")) >= handled
    await until(done)


async def test_rule_filters_on_event_properties(settings, pipeline_pool, providers, flow_worker, triggered, run):
    big, small, other = users = await _users(pipeline_pool, 3)
    campaign_id = await triggered({"event": f"order.{run}", "reentry": "every", "where": {
        "conditions": [{"field": "amount", "operator": "greater_than", "value": 50},
                       {"field": "country", "operator": "in", "value": ["FR", "DE"]}], "logic": "AND"}})
    await send_events(settings, [(big, f"order.{run}", {"amount": 80, "country": "FR"}),
                                 (small, f"order.{run}", {"amount": 20, "country": "FR"}),
                                 (other, f"order.{run}", {"amount": 90, "country": "US"}),
                                 (small, f"view.{run}", {"amount": 99, "country": "DE"})])
    await until(lambda: _has(providers, {big}, 1))
    await asyncio.sleep(2.0)
    assert providers.received(set(users)) == Counter({(big, "email"): 1})
    assert (await _counts(settings, campaign_id))["entered"] == 1


async def test_reentry_once_every_and_window(settings, pipeline_pool, pipeline_redis, providers, flow_worker,
                                             triggered, run):
    once_user, every_user, window_user = users = await _users(pipeline_pool, 3)
    once = await triggered({"event": f"a.{run}", "reentry": "once"})
    every = await triggered({"event": f"b.{run}", "reentry": "every"})
    window = await triggered({"event": f"c.{run}", "reentry": "window", "reentry_window": "1_day"})
    for _ in range(3):
        await send_events(settings, [(once_user, f"a.{run}", {}), (every_user, f"b.{run}", {}),
                                     (window_user, f"c.{run}", {})])
        await asyncio.sleep(0.3)  # distinct occurred_at: distinct events
    for campaign_id in (once, every, window):
        await _settled(settings, campaign_id, 3)
    await until(lambda: _has(providers, set(users), 5))
    await asyncio.sleep(1.5)
    assert providers.received(set(users)) == Counter({(once_user, "email"): 1, (every_user, "email"): 3,
                                                      (window_user, "email"): 1})
    assert (await _counts(settings, once))["refused:entered_before"] == 2
    assert (await _counts(settings, window))["refused:within_window"] == 2

    await advance_clock(pipeline_redis, DAY + 5)  # the window is over: one more entry
    await send_events(settings, [(window_user, f"c.{run}", {}), (once_user, f"a.{run}", {})],
                      at=await _clock(pipeline_redis))
    await until(lambda: _has(providers, {window_user}, 2))
    await asyncio.sleep(1.5)
    assert providers.received({window_user, once_user}) == Counter({(window_user, "email"): 2, (once_user, "email"): 1})


async def test_dedup_key_and_replayed_events_enter_once(settings, pipeline_pool, providers, flow_worker,
                                                        triggered, run):
    buyer, retried = users = await _users(pipeline_pool, 2)
    campaign_id = await triggered({"event": f"paid.{run}", "reentry": "every", "dedup_key": "order_id"})
    await send_events(settings, [(buyer, f"paid.{run}", {"order_id": "o-1"})])
    await asyncio.sleep(0.3)
    await send_events(settings, [(buyer, f"paid.{run}", {"order_id": "o-1"})])  # the upstream retried it
    await asyncio.sleep(0.3)
    await send_events(settings, [(buyer, f"paid.{run}", {"order_id": "o-2"})])
    same = f"evt-{run}"
    for _ in range(2):  # one event delivered twice by Kafka (same event_id)
        await send_events(settings, [(retried, f"paid.{run}", {"order_id": "x"})], ids=[same])
    await _settled(settings, campaign_id, 5)
    await until(lambda: _has(providers, set(users), 3))
    await asyncio.sleep(1.5)
    assert providers.received(set(users)) == Counter({(buyer, "email"): 2, (retried, "email"): 1})
    assert (await _counts(settings, campaign_id))["refused:duplicate"] == 2


async def test_entry_limit_stops_entries(settings, pipeline_pool, providers, flow_worker, triggered, run):
    users = await _users(pipeline_pool, 5)
    campaign_id = await triggered({"event": f"promo.{run}", "reentry": "every", "limit": 2})
    await send_events(settings, [(u, f"promo.{run}", {}) for u in users])
    await _settled(settings, campaign_id, 5)
    await until(lambda: _has(providers, set(users), 2))
    await asyncio.sleep(1.5)
    assert sum(providers.received(set(users)).values()) == 2
    counts = await _counts(settings, campaign_id)
    assert counts["entered"] == 2 and counts["refused:limit"] == 3


async def test_a_rule_on_a_topic_of_flat_records(settings, pipeline_pool, providers, flow_worker, triggered, run):
    """Any topic of JSON records keyed by or carrying a user id: the worker starts reading it when a rule
    names it (a rule naming a topic that does not exist holds nobody up); a record that is no event goes to
    the dead letters with the reason."""
    topic = f"shop-orders-{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    (buyer,) = await _users(pipeline_pool, 1)
    before = await end_offsets(settings.kafka_brokers, DEAD_LETTERS.name)
    await triggered({"event": "order_placed", "topic": f"no-such-topic-{run}"})  # must not hold the others
    await triggered({"event": "order_placed", "topic": topic, "where": [
        {"field": "total", "operator": "greater_than", "value": 10}]})
    await asyncio.sleep(6.0)  # the worker re-subscribes within its reload tick
    await produce(settings.kafka_brokers, topic, [
        (None, orjson.dumps({"customer": "nobody", "event": "order_placed", "total": 99})),
        (str(buyer).encode(), orjson.dumps({"event": "order_placed", "total": 25, "currency": "EUR"})),
    ])
    await until(lambda: _has(providers, {buyer}, 1))
    letters = await read(settings.kafka_brokers, before, keep=lambda r: isinstance(r.value, dict)
                         and r.value.get("source_topic") == topic, until=lambda kept: len(kept) >= 1)
    assert letters[0].value["stage"] == "match_triggers" and "user_id" in letters[0].value["reason"]


async def _has(providers: Providers, users: set[int], n: int) -> bool:
    return sum(providers.received(users).values()) >= n


async def _clock(redis) -> float:
    from tests.helpers.journeys import clock_now
    return await clock_now(redis)


def test_a_triggered_campaign_authored_launched_and_paused_over_the_api(settings, providers, workers, run):
    """The author's path: create with a rule, launch (it listens at once), pause (it stops listening)."""
    from tests.helpers.api import bearer
    from tests.helpers.e2e import Api

    workers.ensure(providers.env(), "trigger-worker")
    (buyer,) = fresh_ids(1)

    async def users() -> None:
        import asyncpg
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            await insert_users(conn, [buyer], lambda u: "en")
        finally:
            await conn.close()
    asyncio.run(users())
    with Api(settings) as api:
        created = api.client.post("/api/v1/campaigns", headers=bearer(api.key), json={
            "name": f"cart rescue {run}", "type": "triggered", "channels": ["email"],
            "content": {"email": DEFAULT_CONTENT["email"]},
            "trigger": {"event": f"cart_abandoned.{run}", "reentry": "every",
                        "where": [{"field": "value", "operator": "greater_than", "value": 20}]}})
        assert created.status_code == 201, created.text
        url = f"/api/v1/campaigns/{created.json()['campaign_id']}"
        launched = api.client.post(f"{url}/launch", headers=bearer(api.key))
        assert launched.status_code == 200 and launched.json()["status"] == "active", launched.text
        asyncio.run(send_events(settings, [(buyer, f"cart_abandoned.{run}", {"value": 45})]))
        asyncio.run(until(lambda: _has(providers, {buyer}, 1)))

        paused = api.client.patch(url, headers=bearer(api.key), json={"status": "paused"})
        assert paused.status_code == 200, paused.text
        time.sleep(1.0)
        asyncio.run(send_events(settings, [(buyer, f"cart_abandoned.{run}", {"value": 99})]))
        time.sleep(3.0)
        assert providers.received({buyer}) == Counter({(buyer, "email"): 1})
        assert api.client.patch(url, headers=bearer(api.key), json={"status": "cancelled"}).status_code == 200


async def test_a_rule_with_an_audience_enters_only_its_members(settings, pipeline_pool, providers, flow_worker,
                                                               triggered, run):
    from tests.helpers.pipeline import insert_static_segment

    member, outsider = users = await _users(pipeline_pool, 2)
    async with pipeline_pool.acquire() as conn:
        segment_id = await insert_static_segment(conn, [member], f"test-trigger-audience-{run}")
    try:
        campaign_id = await triggered({"event": f"visit.{run}", "reentry": "every"}, segment_id=segment_id)
        await send_events(settings, [(u, f"visit.{run}", {}) for u in users])
        await _settled(settings, campaign_id, 2)
        await until(lambda: _has(providers, {member}, 1))
        await asyncio.sleep(1.5)
        assert providers.received(set(users)) == Counter({(member, "email"): 1})
        assert (await _counts(settings, campaign_id))["refused:not_in_segment"] == 1
    finally:
        await pipeline_pool.execute("DELETE FROM segments WHERE segment_id = $1", segment_id)

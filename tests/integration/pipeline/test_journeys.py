"""Journeys end to end: real Kafka, PostgreSQL, Redis, a real worker and recording provider peers.

The worker runs with a controllable clock (HERALD_TEST_CLOCK=1: the flows' clock runs ahead by
Redis ``test:clock:offset_s``), so "wait 1 day" passes when a test moves the clock a day ahead.

The spec's workflow (MultiChannelOrchestrator): send an email, wait a day, if not opened send a push,
wait two days, if still not converted send an SMS; a purchase (the goal) ends the journey at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import orjson
import pytest

from config import Settings
from schemas.keys import flow_progress_key
from tests.helpers.e2e import redis_hash
from tests.helpers.journeys import (
    DAY, Providers, advance_clock, engage, fresh_ids, publish_flow, remove_flow, send_events, until,
)
from tests.helpers.journey_specs import spec_workflow
from tests.helpers.pipeline import insert_users

def spec(run: str) -> dict:
    """The spec's workflow, its events named for this run (other tests' live journeys must not hear them)."""
    return spec_workflow(entry=f"signup.{run}", goal=f"purchase.{run}", name="spec workflow")


@pytest.fixture
async def flows(pipeline_pool, pipeline_redis):
    made: list[int] = []
    yield made
    for journey_id in made:
        await remove_flow(pipeline_pool, pipeline_redis, journey_id)


async def progress(settings: Settings, journey_id: int) -> dict[str, float]:
    return await redis_hash(settings, flow_progress_key(f"j{journey_id}"))


async def test_spec_workflow_sends_what_each_user_earns(settings, pipeline_pool, pipeline_redis, providers,
                                                        flow_worker, flows, run):
    opener, clicker, buyer_early, buyer_late, ignorer = users = fresh_ids(5)
    async with pipeline_pool.acquire() as conn:
        await insert_users(conn, users, lambda u: "en")
    journey_id, _, steps = await publish_flow(pipeline_pool, pipeline_redis, spec(run))
    flows.append(journey_id)
    who = set(users)

    signed_up = time.time()  # the entry's tag: its messages' step is "<node>@<that second>"
    await send_events(settings, [(u, f"signup.{run}", {"plan": "free"}) for u in users], at=signed_up)
    await until(lambda: _count(providers, who, "email", 5))
    await engage(settings, opener, steps["email"], "email", f"email@{int(signed_up)}", "opened")
    await engage(settings, clicker, steps["email"], "email", f"email@{int(signed_up)}", "clicked")
    await send_events(settings, [(buyer_early, f"purchase.{run}", {"amount": 30})])
    await until(lambda: _field(settings, journey_id, "exited:goal", 1))
    await asyncio.sleep(1.0)  # the opens reach the worker (no counter shows an open)

    await advance_clock(pipeline_redis, DAY + 5)
    await until(lambda: _count(providers, who, "push", 2))
    await send_events(settings, [(buyer_late, f"purchase.{run}", {"amount": 50})])
    await until(lambda: _field(settings, journey_id, "exited:goal", 2))

    await advance_clock(pipeline_redis, 2 * DAY + 5)
    await until(lambda: _count(providers, who, "sms", 3))
    await until(lambda: _field(settings, journey_id, "exited:exit", 3))
    await asyncio.sleep(2.0)  # anything more would have come by now
    assert providers.received(who) == Counter({
        (opener, "email"): 1, (opener, "sms"): 1,
        (clicker, "email"): 1, (clicker, "sms"): 1,
        (buyer_early, "email"): 1,
        (buyer_late, "email"): 1, (buyer_late, "push"): 1,
        (ignorer, "email"): 1, (ignorer, "push"): 1, (ignorer, "sms"): 1,
    })
    counts = await progress(settings, journey_id)
    assert counts["entered"] == 5 and counts["converted"] == 2
    assert not any(v for k, v in counts.items() if k.startswith("at:")), counts  # nobody left inside


async def _count(providers: Providers, users: set[int], channel: str, n: int) -> bool:
    return sum(v for (_, ch), v in providers.received(users).items() if ch == channel) >= n


async def _field(settings: Settings, journey_id: int, name: str, n: float) -> bool:
    return (await progress(settings, journey_id)).get(name, 0) >= n


def wait_then_mail(run: str) -> dict:
    return {
        "name": "wait then mail",
        "goal": {"event": f"purchase.{run}"},
        "nodes": [
            {"id": "start", "type": "entry", "event": f"browse.{run}", "next": "pause"},
            {"id": "pause", "type": "wait", "duration": "1_day", "next": "mail"},
            {"id": "mail", "type": "send", "channel": "email", "template_id": 1, "next": "done"},
            {"id": "done", "type": "exit"},
        ],
    }


async def test_a_goal_drops_what_was_already_queued_for_the_user(settings, pipeline_pool, pipeline_redis, providers,
                                                                  flow_worker, flows, run):
    """The welcome email is held (its campaign paused) when the user buys: on resume it is not sent to them,
    while another user of the same batch, who did not buy, gets it."""
    buyer, other = users = fresh_ids(2)
    async with pipeline_pool.acquire() as conn:
        await insert_users(conn, users, lambda u: "en")
    journey_id, _, steps = await publish_flow(pipeline_pool, pipeline_redis, spec(run))
    flows.append(journey_id)
    welcome = steps["email"]
    await _control(settings, welcome, "pause", "active", "paused")
    await until(lambda: _status(pipeline_redis, welcome, "paused"))
    await send_events(settings, [(u, f"signup.{run}", {}) for u in users])
    await until(lambda: _held(pipeline_redis, welcome))
    await send_events(settings, [(buyer, f"purchase.{run}", {"amount": 10})])
    await until(lambda: _field(settings, journey_id, "exited:goal", 1))
    await _control(settings, welcome, "resume", "paused", "active")
    await until(lambda: _count(providers, {other}, "email", 1))
    await asyncio.sleep(2.0)
    assert providers.received(set(users)) == Counter({(other, "email"): 1})


async def test_users_waiting_through_a_sigkill_continue_on_time_once(settings, pipeline_pool, pipeline_redis, providers,
                                                                      flow_worker, flows, workers, run):
    users = fresh_ids(40)
    async with pipeline_pool.acquire() as conn:
        await insert_users(conn, users, lambda u: "en")
    journey_id, _, _ = await publish_flow(pipeline_pool, pipeline_redis, wait_then_mail(run))
    flows.append(journey_id)
    await send_events(settings, [(u, f"browse.{run}", {}) for u in users])
    await until(lambda: _field(settings, journey_id, "at:pause", len(users)))

    os.killpg(flow_worker.pid, signal.SIGKILL)
    flow_worker.wait()
    await advance_clock(pipeline_redis, DAY / 2)
    workers.ensure(providers.env(), "journey-worker")  # a new worker: the table and its timers come back
    await asyncio.sleep(3.0)
    assert providers.received(set(users)) == Counter()  # half a day: nobody is due yet
    await advance_clock(pipeline_redis, DAY / 2 + 5)
    await until(lambda: _count(providers, set(users), "email", len(users)), timeout_s=120)
    await asyncio.sleep(2.0)
    assert providers.received(set(users)) == Counter({(u, "email"): 1 for u in users})


async def test_a_published_edit_leaves_earlier_entrants_on_their_version(settings, pipeline_pool, pipeline_redis,
                                                                          providers, flow_worker, flows, run):
    early, late = fresh_ids(3), fresh_ids(3)
    async with pipeline_pool.acquire() as conn:
        await insert_users(conn, early + late, lambda u: "en")
    journey_id, _, _ = await publish_flow(pipeline_pool, pipeline_redis, wait_then_mail(run))
    flows.append(journey_id)
    await send_events(settings, [(u, f"browse.{run}", {}) for u in early])
    await until(lambda: _field(settings, journey_id, "at:pause", 3))

    edited = {**wait_then_mail(run), "nodes": [
        {"id": "start", "type": "entry", "event": f"browse.{run}", "next": "pause"},
        {"id": "pause", "type": "wait", "duration": "2_days", "next": "ping"},
        {"id": "ping", "type": "send", "channel": "push", "template_id": 2, "next": "done"},
        {"id": "done", "type": "exit"},
    ]}
    await publish_flow(pipeline_pool, pipeline_redis, edited, journey_id=journey_id)
    await send_events(settings, [(u, f"browse.{run}", {}) for u in late])
    await until(lambda: _field(settings, journey_id, "at:pause", 6))

    await advance_clock(pipeline_redis, DAY + 5)  # version 1's wait is over, version 2's is not
    await until(lambda: _count(providers, set(early), "email", 3))
    await asyncio.sleep(2.0)
    assert providers.received(set(late)) == Counter()
    await advance_clock(pipeline_redis, DAY)
    await until(lambda: _count(providers, set(late), "push", 3))
    await asyncio.sleep(2.0)
    assert providers.received(set(early + late)) == Counter(
        {**{(u, "email"): 1 for u in early}, **{(u, "push"): 1 for u in late}})


async def _control(settings: Settings, campaign_id: int, action: str, previous: str, status: str) -> None:
    import uuid
    from datetime import datetime, timezone

    from schemas.campaigns import CampaignControl
    from schemas.encoding import encode
    from schemas.topics import CAMPAIGN_CONTROL
    from tests.helpers.kafka import produce

    record = CampaignControl(control_id=uuid.uuid4(), campaign_id=campaign_id, action=action, previous_status=previous,
                             status=status, launch_id=None, issued_at=datetime.now(timezone.utc))
    await produce(settings.kafka_brokers, CAMPAIGN_CONTROL.name, [(str(campaign_id).encode(), encode(record))])


async def _status(redis, campaign_id: int, status: str) -> bool:
    from schemas.keys import status_key
    return (await redis.get(status_key(campaign_id))) in (status, status.encode())


async def _held(redis, campaign_id: int) -> bool:
    from schemas.keys import held_key
    return await redis.llen(held_key(campaign_id)) > 0


async def test_users_entering_a_dynamic_segment_enter_the_journey(settings, pipeline_pool, pipeline_redis, providers,
                                                                   flow_worker, flows, run):
    """Members when the journey goes live are its baseline; those who join the segment later enter it, once."""
    from schemas.keys import flow_segment_key
    from schemas.topics import JOURNEY_SIGNALS
    from tests.helpers.e2e import profile, publish_profiles

    tier = f"tier_{run}"
    already, stays, joins, joins_too = users = fresh_ids(4)
    await publish_profiles(settings, [profile(u, run, "en", **{tier: "gold" if u == already else "silver"})
                                      for u in users])
    segment_id = await pipeline_pool.fetchval(
        "INSERT INTO segments (name, criteria, dynamic, kind) VALUES ($1, $2::jsonb, true, 'dynamic') RETURNING segment_id",
        f"test-journey-segment-{run}", orjson.dumps({"conditions": [
            {"field": f"attributes.{tier}", "operator": "equals", "value": "gold"}], "logic": "AND"}).decode())
    try:
        await asyncio.sleep(2.0)  # the worker's audience store has the profiles
        journey_id, _, _ = await publish_flow(pipeline_pool, pipeline_redis, {
            "name": "gold welcome", "nodes": [
                {"id": "start", "type": "entry", "segment_id": segment_id, "next": "mail"},
                {"id": "mail", "type": "send", "channel": "email", "template_id": 1, "next": "done"},
                {"id": "done", "type": "exit"}]})
        flows.append(journey_id)

        async def baseline() -> bool:
            keys = [flow_segment_key(f"j{journey_id}", p) for p in range(JOURNEY_SIGNALS.partitions)]
            return all(await asyncio.gather(*(pipeline_redis.exists(k) for k in keys)))
        await until(baseline)

        await publish_profiles(settings, [profile(u, run, "en", **{tier: "gold"}) for u in (joins, joins_too)])
        await until(lambda: _count(providers, set(users), "email", 2))
        await publish_profiles(settings, [profile(joins, run, "en", **{tier: "silver"})])  # leaves, comes back
        await asyncio.sleep(2.5)
        await publish_profiles(settings, [profile(joins, run, "en", **{tier: "gold"})])
        await asyncio.sleep(3.0)
        assert providers.received(set(users)) == Counter({(joins, "email"): 1, (joins_too, "email"): 1})
        counts = await progress(settings, journey_id)
        assert counts["entered"] == 2 and counts.get("refused:entered_before", 0) >= 1
    finally:
        await pipeline_pool.execute("DELETE FROM segments WHERE segment_id = $1", segment_id)


async def test_the_gate_screens_every_journey_send(settings, pipeline_pool, pipeline_redis, providers, flow_worker,
                                                    flows, run):
    """Preferences, frequency caps and quiet hours apply to journey sends as to campaigns: an unsubscribed
    user gets no email, a user capped at one email a week gets the first of two, and a journey whose quiet
    hours cover now defers its sends (to their end) instead of sending them."""
    from datetime import datetime, timedelta, timezone

    from schemas.topics import DELIVERY_EVENTS, PREFERENCE_UPDATES
    from tests.helpers.kafka import end_offsets, of_campaign, produce, read

    optout, capped, free = users = fresh_ids(3)
    async with pipeline_pool.acquire() as conn:
        await insert_users(conn, users, lambda u: "en")

    def prefs(uid: int, unsubscribed: list[str], cap: dict[str, int]) -> tuple[bytes, bytes]:
        return str(uid).encode(), orjson.dumps({
            "user_id": uid, "channels": {ch: ch not in unsubscribed for ch in ("email", "sms", "push", "in_app")},
            "frequency_cap": cap, "frequency_cap_window_days": 7, "categories": {}, "unsubscribed": unsubscribed,
            "updated_at": datetime.now(timezone.utc).isoformat(), "version": 1})
    await produce(settings.kafka_brokers, PREFERENCE_UPDATES.name, [prefs(optout, ["email"], {}),
                                                                   prefs(capped, [], {"email": 1})])
    await asyncio.sleep(2.0)  # the gate's replica has them
    two_mails = {"name": "two mails", "nodes": [
        {"id": "start", "type": "entry", "event": f"joined.{run}", "next": "first"},
        {"id": "first", "type": "send", "channel": "email", "template_id": 1, "next": "second"},
        {"id": "second", "type": "send", "channel": "email", "template_id": 1, "next": "done"},
        {"id": "done", "type": "exit"}]}
    journey_id, _, steps = await publish_flow(pipeline_pool, pipeline_redis, two_mails)
    flows.append(journey_id)
    await send_events(settings, [(u, f"joined.{run}", {}) for u in users])
    await until(lambda: _count(providers, set(users), "email", 3))
    await asyncio.sleep(2.0)
    assert providers.received(set(users)) == Counter({(free, "email"): 2, (capped, "email"): 1})

    now = datetime.now(timezone.utc)
    window = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=1)).strftime("%H:%M")}
    (night_owl,) = fresh_ids(1)
    async with pipeline_pool.acquire() as conn:
        await insert_users(conn, [night_owl], lambda u: "en")
    quiet, _, quiet_steps = await publish_flow(pipeline_pool, pipeline_redis, {
        "name": "quiet", "quiet_hours": window, "nodes": [
            {"id": "start", "type": "entry", "event": f"late.{run}", "next": "mail"},
            {"id": "mail", "type": "send", "channel": "email", "template_id": 1, "next": "done"},
            {"id": "done", "type": "exit"}]})
    flows.append(quiet)
    before = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await send_events(settings, [(night_owl, f"late.{run}", {})])
    deferred = await read(settings.kafka_brokers, before, keep=of_campaign(quiet_steps["mail"]),
                          until=lambda kept: any(e["status"] == "deferred" for r in kept for e in r.value["events"]))
    assert [e["user_id"] for r in deferred for e in r.value["events"] if e["status"] == "deferred"] == [night_owl]
    await asyncio.sleep(2.0)
    assert providers.received({night_owl}) == Counter()
    from schemas.keys import DEFERRED
    for member in await pipeline_redis.zrange(DEFERRED, 0, -1):  # not to be released after the test is gone
        if orjson.loads(member).get("campaign_id") == quiet_steps["mail"]:
            await pipeline_redis.zrem(DEFERRED, member)

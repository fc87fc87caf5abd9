"""The gate on the real stack: MessageBatch records in, outbox batches and delivery events out.

Each test publishes its own MessageBatch records for its own campaigns (made by the
``make_campaign`` fixture: fresh users above 10**12, rows removed afterwards) straight
to ``message-requests`` and asserts exactly what the worker's gate emitted for them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas import keys
from schemas.topics import DELIVERY_EVENTS, MESSAGE_REQUESTS, OUTBOX, PREFERENCE_UPDATES
from pipeline.partitioning import user_partition
from schemas.messages import DeliveryEvent, DeliveryEventBatch, MessageBatch, Recipient, message_id
from schemas.encoding import encode
from schemas.preferences import Preferences, preference_key
from tests.helpers.kafka import end_offsets
from tests.helpers.kafka import read_campaign_records
from tests.helpers.pipeline import set_contact


def _one_partition(campaign, settings, n: int) -> tuple[int, list[int]]:
    """``n`` of the campaign's users that share one partition, and that partition."""
    by: dict[int, list[int]] = {}
    for uid in campaign.user_ids:
        by.setdefault(user_partition(uid, settings.topic_partitions), []).append(uid)
    p, uids = max(by.items(), key=lambda kv: len(kv[1]))
    assert len(uids) >= n
    return p, uids[:n]


def _batch(cid: int, p: int, uids: list[int], batch_id: str, step: str = "send") -> MessageBatch:
    return MessageBatch(batch_id=batch_id, campaign_id=cid, step=step, partition=p,
                        recipients=[Recipient(user_id=u, variant="A") for u in uids])


async def _send(settings, topic: str, p: int, key: bytes, value: bytes) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, acks="all")
    await producer.start()
    try:
        return (await producer.send_and_wait(topic, value, key=key, partition=p)).offset
    finally:
        await producer.stop()


async def _consumed(settings, topic: str, p: int, offset: int, timeout_s: float = 90.0, stage: str | None = None) -> None:
    """Wait until the worker group (or a bulk consumer ``stage``'s, pipeline/batch_consumer.py) committed past
    ``offset`` on ``topic``/``p`` (it applied the record)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            offsets = await admin.list_consumer_group_offsets(f"{settings.app_id}.{stage}" if stage else settings.app_id)
            got = offsets.get(TopicPartition(topic, p))
            if got is not None and got.offset > offset:
                return
            assert time.monotonic() < deadline, f"worker did not consume {topic}/{p}@{offset}"
            await asyncio.sleep(0.25)
    finally:
        await admin.close()


async def _starts(settings, *topics: str) -> dict[TopicPartition, int]:
    out = {}
    for t in topics:
        out |= await end_offsets(settings.kafka_brokers, t)
    return out


GATE_STATUSES = frozenset({"queued", "suppressed", "deferred", "held", "cancelled"})


def _events(records, cid: int) -> list[dict]:
    """The gate's events of campaign ``cid`` (the senders' sent/failed/... on the same topic are not ours)."""
    return [e for _, r in records if "events" in r for e in r["events"]
            if e["campaign_id"] == cid and e["status"] in GATE_STATUSES]


def _outbox(records, cid: int, channel: str) -> list[dict]:
    return [r for _, r in records if r.get("campaign_id") == cid and r.get("channel") == channel and "recipients" in r]


def _outcomes(events, channel: str, step: str = "send") -> dict[int, tuple[str, str | None]]:
    return {e["user_id"]: (e["status"], e["reason"]) for e in events if e["channel"] == channel and e["step"] == step}


async def _read(settings, starts, cid: int, events: int):
    await read_campaign_records(settings, starts, cid, lambda rs: len(_events(rs, cid)) >= events)
    await asyncio.sleep(0.5)  # anything emitted with those events is on the topics by now
    return await read_campaign_records(settings, starts, cid, lambda rs: len(_events(rs, cid)) >= events,
                                       timeout_s=10)


async def test_gate_suppresses_with_reasons_dedups_replays_and_caps(worker, settings, make_campaign, pipeline_pool):
    campaign = await make_campaign(users=120, channels=["email", "sms"])
    cid = campaign.campaign_id
    p, u = _one_partition(campaign, settings, 8)
    # u0 unsubscribed from email; u1 capped at 1 email a week; u2 has no email address; u3 bounced.
    opted_out = Preferences(user_id=u[0], email_enabled=False).to_update()
    capped = Preferences(user_id=u[1], frequency_cap={"email": 1}).to_update()
    for pref in (opted_out, capped):
        last_pref = await _send(settings, PREFERENCE_UPDATES.name, p, preference_key(pref.user_id), encode(pref))
    await set_contact(pipeline_pool, u[2], email=None)
    bounce = DeliveryEventBatch(events=[DeliveryEvent(message_id=message_id(cid, u[3], "email", "earlier"),
                                                      campaign_id=cid, user_id=u[3], channel="email", step="earlier",
                                                      status="bounced", reason="550 mailbox unavailable")])
    last_bounce = await _send(settings, DELIVERY_EVENTS.name, p, b"test", encode(bounce))
    await _consumed(settings, PREFERENCE_UPDATES.name, p, last_pref)
    await _consumed(settings, DELIVERY_EVENTS.name, p, last_bounce)

    starts = await _starts(settings, OUTBOX["email"].name, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
    first = encode(_batch(cid, p, u, f"gate-test:{cid}:0:{p}"))
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", first)
    records = await _read(settings, starts, cid, events=16)
    events = [e for e in _events(records, cid) if e["step"] == "send"]
    assert _outcomes(events, "email") == {
        u[0]: ("suppressed", "unsubscribed"), u[1]: ("queued", None), u[2]: ("suppressed", "no_address"),
        u[3]: ("suppressed", "suppression_list"), **{x: ("queued", None) for x in u[4:]}}
    assert _outcomes(events, "sms") == {x: ("queued", None) for x in u}
    (email,), (sms,) = _outbox(records, cid, "email"), _outbox(records, cid, "sms")
    assert [r["user_id"] for r in email["recipients"]] == [u[1], *u[4:]]
    assert [r["user_id"] for r in sms["recipients"]] == u
    assert (email["partition"], email["batch_id"]) == (p, f"gate-test:{cid}:0:{p}:email")
    assert {e["message_id"] for e in events if e["user_id"] == u[4]} == {
        str(message_id(cid, u[4], "email")), str(message_id(cid, u[4], "sms"))}
    # Every record the gate wrote went to the batch's partition.
    assert {part for part, r in records if r.get("campaign_id") == cid or "events" in r} == {p}

    # The same batch published again: every released message is a duplicate, nothing reaches an outbox.
    starts = await _starts(settings, OUTBOX["email"].name, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", first)
    records = await _read(settings, starts, cid, events=16)
    events = _events(records, cid)
    assert _outcomes(events, "email") == {
        u[0]: ("suppressed", "unsubscribed"), u[2]: ("suppressed", "no_address"),
        u[3]: ("suppressed", "suppression_list"), **{x: ("suppressed", "duplicate") for x in (u[1], *u[4:])}}
    assert _outcomes(events, "sms") == {x: ("suppressed", "duplicate") for x in u}
    assert _outbox(records, cid, "email") == [] and _outbox(records, cid, "sms") == []

    # A second step: not a duplicate, but u1 has had their one email this week.
    starts = await _starts(settings, OUTBOX["email"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k",
                encode(_batch(cid, p, u, f"gate-test:{cid}:1:{p}", step="reminder")))
    records = await _read(settings, starts, cid, events=16)
    email_outcomes = _outcomes(_events(records, cid), "email", "reminder")
    assert email_outcomes[u[1]] == ("suppressed", "frequency_cap")
    assert all(email_outcomes[x] == ("queued", None) for x in u[4:])
    (email,) = _outbox(records, cid, "email")
    assert [r["user_id"] for r in email["recipients"]] == u[4:]


async def test_gate_releases_no_message_past_the_budget(worker, settings, make_campaign, pipeline_redis):
    unit = settings.unit_costs["email"]
    campaign = await make_campaign(users=60, channels=["email"], budget={"max_spend": 3 * unit, "currency": "USD"})
    cid = campaign.campaign_id
    p, u = _one_partition(campaign, settings, 5)
    starts = await _starts(settings, OUTBOX["email"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, u, f"gate-budget:{cid}:{p}")))
    records = await _read(settings, starts, cid, events=5)
    assert _outcomes(_events(records, cid), "email") == {
        **{x: ("queued", None) for x in u[:3]}, **{x: ("suppressed", "budget") for x in u[3:]}}
    (email,) = _outbox(records, cid, "email")
    assert [r["user_id"] for r in email["recipients"]] == u[:3]
    assert float(await pipeline_redis.get(f"campaign:{cid}:spend")) <= 3 * unit + 1e-9


async def test_paused_campaign_batch_is_held_and_cancelled_one_is_counted(worker, settings, make_campaign,
                                                                          pipeline_redis):
    paused = await make_campaign(users=40, channels=["email"])
    cancelled = await make_campaign(users=40, channels=["email"])
    await pipeline_redis.set(f"campaign:{paused.campaign_id}:status", "paused")
    await pipeline_redis.set(f"campaign:{cancelled.campaign_id}:status", "cancelled")
    for c, outcome in ((paused, ("held", None)), (cancelled, ("cancelled", "cancelled"))):
        p, u = _one_partition(c, settings, 3)
        starts = await _starts(settings, OUTBOX["email"].name, DELIVERY_EVENTS.name)
        raw = encode(_batch(c.campaign_id, p, u, f"gate-control:{c.campaign_id}:{p}"))
        await _send(settings, MESSAGE_REQUESTS.name, p, b"k", raw)
        records = await _read(settings, starts, c.campaign_id, events=3)
        assert _outcomes(_events(records, c.campaign_id), "email") == {x: outcome for x in u}
        assert _outbox(records, c.campaign_id, "email") == []
        held = await pipeline_redis.lrange(f"campaign:{c.campaign_id}:held", 0, -1)
        assert held == ([raw] if c is paused else [])


async def test_quiet_hours_defer_then_release_with_not_before(worker, settings, make_campaign, pipeline_pool):
    campaign = await make_campaign(users=40, channels=["email"])
    cid = campaign.campaign_id
    p, u = _one_partition(campaign, settings, 2)
    now = datetime.now(timezone.utc)
    end = now + timedelta(seconds=4)
    window = {"start": (now - timedelta(minutes=5)).strftime("%H:%M:%S"), "end": end.strftime("%H:%M:%S")}
    await pipeline_pool.execute("UPDATE campaigns SET schedule = $2::jsonb WHERE campaign_id = $1", cid,
                                orjson.dumps({"quiet_hours": window}).decode())
    starts = await _starts(settings, OUTBOX["email"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, u, f"gate-quiet:{cid}:{p}")))
    records = await read_campaign_records(
        settings, starts, cid, lambda rs: Counter(e["status"] for e in _events(rs, cid))["queued"] >= 2)
    statuses = [(e["user_id"], e["status"]) for e in _events(records, cid)]
    assert statuses == [(u[0], "deferred"), (u[1], "deferred"), (u[0], "queued"), (u[1], "queued")]
    (email,) = _outbox(records, cid, "email")
    assert [r["user_id"] for r in email["recipients"]] == u
    released_at = datetime.fromisoformat(email["recipients"][0]["not_before"])
    assert released_at == end.replace(microsecond=0)


async def test_gate_holds_a_channel_whose_senders_are_behind(worker, settings, make_campaign, pipeline_redis):
    """While ``lag:sms`` says the SMS senders are behind, nothing is released to outbox.sms; then it is."""
    campaign = await make_campaign(users=20, channels=["sms"])
    cid = campaign.campaign_id
    p, u = _one_partition(campaign, settings, 4)
    await pipeline_redis.set("lag:sms", "30", px=60_000)  # far over gate_pace_lag_s, and it does not expire soon
    try:
        starts = await _starts(settings, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
        await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, u, f"pace-test:{cid}:0:{p}")))
        await asyncio.sleep(1.0)
        until = time.monotonic() + 2.0  # read for 2 s more: anything the gate emitted shows up
        held = await read_campaign_records(settings, starts, cid, lambda rs: bool(rs) or time.monotonic() > until)
        assert _outbox(held, cid, "sms") == [] and _events(held, cid) == []
    finally:
        await pipeline_redis.delete("lag:sms")
    records = await _read(settings, starts, cid, events=4)
    assert {e["status"] for e in _events(records, cid)} == {"queued"}
    assert sorted(r["user_id"] for b in _outbox(records, cid, "sms") for r in b["recipients"]) == sorted(u)


async def test_a_paused_campaign_is_held_at_once_even_while_its_channel_is_behind(worker, settings, make_campaign,
                                                                                   pipeline_redis):
    """Pacing waits only for batches that would be released: a pause applies without waiting for the senders."""
    campaign = await make_campaign(users=20, channels=["sms"])
    cid = campaign.campaign_id
    p, u = _one_partition(campaign, settings, 3)
    await pipeline_redis.set(f"campaign:{cid}:status", "paused")
    await pipeline_redis.set("lag:sms", "30", px=60_000)
    try:
        starts = await _starts(settings, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
        await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, u, f"pace-paused:{cid}:{p}")))
        records = await read_campaign_records(settings, starts, cid, lambda rs: len(_events(rs, cid)) >= 3,
                                              timeout_s=20)
    finally:
        await pipeline_redis.delete("lag:sms")
    assert {e["status"] for e in _events(records, cid)} == {"held"}
    assert _outbox(records, cid, "sms") == []


async def test_a_channel_that_is_behind_holds_its_own_batches_not_the_others(worker, settings, make_campaign,
                                                                              pipeline_redis):
    """An email campaign's batch read after a paced SMS campaign's batch, on the same partition, is
    released at once; the SMS batch follows when its senders catch up."""
    sms = await make_campaign(users=60, channels=["sms"])
    email = await make_campaign(users=60, channels=["email"])
    by: dict[int, tuple[list[int], list[int]]] = {}
    for campaign, side in ((sms, 0), (email, 1)):
        for uid in campaign.user_ids:
            by.setdefault(user_partition(uid, settings.topic_partitions), ([], []))[side].append(uid)
    p, (u_sms, u_email) = max(by.items(), key=lambda kv: min(len(kv[1][0]), len(kv[1][1])))
    u_sms, u_email = u_sms[:3], u_email[:3]
    assert len(u_sms) == len(u_email) == 3
    await pipeline_redis.set("lag:sms", "30", px=60_000)
    try:
        starts = await _starts(settings, OUTBOX["sms"].name, OUTBOX["email"].name, DELIVERY_EVENTS.name)
        await _send(settings, MESSAGE_REQUESTS.name, p, b"k",
                    encode(_batch(sms.campaign_id, p, u_sms, f"lanes:{sms.campaign_id}:{p}")))
        await _send(settings, MESSAGE_REQUESTS.name, p, b"k",
                    encode(_batch(email.campaign_id, p, u_email, f"lanes:{email.campaign_id}:{p}")))
        released = await read_campaign_records(settings, starts, email.campaign_id,
                                               lambda rs: len(_events(rs, email.campaign_id)) >= 3, timeout_s=20)
        assert {e["status"] for e in _events(released, email.campaign_id)} == {"queued"}
        assert sorted(r["user_id"] for b in _outbox(released, email.campaign_id, "email")
                      for r in b["recipients"]) == sorted(u_email)
        until = time.monotonic() + 1.0
        held = await read_campaign_records(settings, starts, sms.campaign_id,
                                           lambda rs: bool(rs) or time.monotonic() > until)
        assert _outbox(held, sms.campaign_id, "sms") == [] and _events(held, sms.campaign_id) == []
    finally:
        await pipeline_redis.delete("lag:sms")
    records = await _read(settings, starts, sms.campaign_id, events=3)
    assert {e["status"] for e in _events(records, sms.campaign_id)} == {"queued"}
    assert sorted(r["user_id"] for b in _outbox(records, sms.campaign_id, "sms") for r in b["recipients"]) == sorted(u_sms)


async def test_a_batch_that_fails_after_taking_its_window_place_gives_the_place_back(settings, make_campaign,
                                                                                     pipeline_redis, monkeypatch):
    """The gate takes a place in the channel's release window before it screens a batch; a batch that
    then fails (and is dead-lettered) must not keep it until its lease ends, or a run of such batches
    would close the channel's window for everybody. Real Redis and PostgreSQL; the failure is a bug's."""
    import agents.gate as gate
    from pipeline.gate import outbox_batch_id
    from pipeline.gate_io import GateIO

    campaign = await make_campaign(users=20, channels=["sms"])
    p, u = _one_partition(campaign, settings, 2)
    batch = _batch(campaign.campaign_id, p, u, f"place-test:{campaign.campaign_id}:{p}")
    place = outbox_batch_id(batch.batch_id, "sms")
    taken = []

    async def broken(*args, **kwargs):
        taken.append(await pipeline_redis.zscore(keys.window_out_key("sms"), place))
        raise RuntimeError("a bug in the gate")

    monkeypatch.setattr(gate, "_release", broken)
    monkeypatch.setattr(gate, "stores", GateIO(settings))
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            await gate.gate_batch(p, 0, encode(batch))
        assert taken and taken[0] is not None  # the place was taken before the failure
        assert await pipeline_redis.zscore(keys.window_out_key("sms"), place) is None
    finally:
        await pipeline_redis.zrem(keys.window_out_key("sms"), place)
        await gate.stores.aclose()

"""GDPR erasure on the real stack: a person with a profile, preferences, events, sent messages and gate
state is exported, erased, and then found in no store; the gate refuses them and an old profile does not
bring them back (pipeline/erase.py).

The API runs in-process with the session's own settings (not the API tests' private local dir), so that
it and the worker share the signing key that the erased-users markers are keyed with.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from aiokafka import TopicPartition
from starlette.testclient import TestClient

from api.app import create_app
from pipeline import erase, gate as gate_rules
from pipeline.metrics import log_shard
from pipeline.partitioning import user_partition
from pipeline.stores.cassandra import connect, run_async
from schemas import keys
from schemas.encoding import encode
from schemas.preferences import preference_key
from schemas.records import UserEvent, UserProfile
from schemas.topics import (
    DELIVERY_EVENTS, GATE_HISTORY, GATE_PREFERENCES, MESSAGE_REQUESTS, OUTBOX, USER_EVENTS, USER_PROFILES,
)
from tests.helpers.api import bearer, new_key
from tests.helpers.kafka import end_offsets, eventually, read
from tests.integration.pipeline.test_gate import _batch, _events, _one_partition, _outcomes, _read, _send, _starts


@pytest.fixture
def api(settings):
    with TestClient(create_app(settings.model_copy(update={"api_key_cache_s": 0}))) as client:
        yield client


async def _latest(settings, spec, p: int, start: int, key: bytes) -> list:
    """The values written to ``spec``'s partition ``p`` under ``key`` from ``start`` to its end now, in order."""
    tp = TopicPartition(spec.name, p)
    end = await end_offsets(settings.kafka_brokers, spec.name)
    records = await read(settings.kafka_brokers, {tp: start}, stop_at={tp: end[tp]}, keep=lambda r: r.key == key)
    return [r.raw for r in records]


async def test_an_erased_user_is_found_nowhere_refused_by_the_gate_and_not_resurrected(
        worker, settings, make_campaign, pipeline_pool, pipeline_redis, api):
    admin = bearer(await new_key(settings, "admin"))
    campaign = await make_campaign(users=60, channels=["email", "in_app"])
    cid = campaign.campaign_id
    p, (uid, other) = _one_partition(campaign, settings, 2)
    assert user_partition(uid, settings.topic_partitions) == p
    ks = settings.cassandra_keyspace
    cluster, session = connect(settings)
    try:
        changelogs = {spec.name: (await end_offsets(settings.kafka_brokers, spec.name))[TopicPartition(spec.name, p)]
                      for spec in (GATE_HISTORY, GATE_PREFERENCES, USER_PROFILES)}
        # The profile as upstream sends it, preferences through the API, an event, then messages.
        signed_up = datetime.now(timezone.utc) - timedelta(days=3)
        profile = UserProfile(user_id=uid, email=f"erin{uid}@example.com", phone=f"+1555{uid % 10**7:07d}", first_name="Erin",
                              created_at=signed_up)
        await _send(settings, USER_PROFILES.name, p, preference_key(uid), encode(profile))
        await eventually(lambda: pipeline_pool.fetchval("SELECT first_name = 'Erin' FROM users WHERE user_id = $1",
                                                        uid))
        changed = api.patch(f"/api/v1/users/{uid}/preferences", headers=admin,
                            json={"sms_enabled": False, "frequency_cap": {"email": 5}})
        assert changed.status_code == 200, changed.text
        event = UserEvent(user_id=uid, name="purchase", occurred_at=datetime.now(timezone.utc))
        await _send(settings, USER_EVENTS.name, p, preference_key(uid), encode(event))
        month = event.occurred_at.strftime("%Y-%m")
        events_q = f"SELECT event_type FROM {ks}.user_events WHERE user_id = %s AND month = %s"
        await eventually(lambda: _rows(session, events_q, (uid, month)), timeout_s=60)

        starts = await _starts(settings, OUTBOX["email"].name, DELIVERY_EVENTS.name)
        await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, [uid, other], f"erase:{cid}:{p}")))
        records = await _read(settings, starts, cid, events=4)
        assert _outcomes(_events(records, cid), "email") == {uid: ("queued", None), other: ("queued", None)}
        index_q = f"SELECT campaign_id, day FROM {ks}.message_log_by_user WHERE user_bucket = %s AND user_id = %s"
        await eventually(lambda: _rows(session, index_q, (erase.user_bucket(uid), uid)), timeout_s=90)
        await eventually(lambda: pipeline_redis.exists(keys.inbox_key(uid)), timeout_s=60)

        exported = api.get(f"/api/v1/users/{uid}/export", headers=admin)
        assert exported.status_code == 200, exported.text
        body = exported.json()
        assert body["profile"]["email"] == profile.email
        assert body["preferences"]["sms_enabled"] is False
        assert [e["event_type"] for e in body["events"]] == ["purchase"]
        assert {m["campaign_id"] for m in body["messages"]} == {cid}
        assert body["unsubscribes"] and body["inbox"]

        # Erase, and wait for every store, the worker's tables included.
        answer = api.delete(f"/api/v1/users/{uid}", headers=admin)
        assert answer.status_code == 202, answer.text
        erasure_id = answer.json()["erasure_id"]

        async def done():
            state = api.get(f"/api/v1/erasures/{erasure_id}", headers=admin).json()
            assert not any(s.startswith("failed") for s in state["stores"].values()), state
            return state["done"]

        await eventually(done, timeout_s=60)

        # PostgreSQL: nothing names them; the opt-out survives as a hash of the address.
        for table in ("users", "user_preferences", "segment_members", "unsubscribes"):
            assert await pipeline_pool.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", uid) == 0, table
        assert await pipeline_pool.fetchval(
            "SELECT count(*) FROM unsubscribes WHERE address_hash = $1",
            erase.address_hash(erase.marker_key(_signing(settings)), profile.phone)) == 1
        # Cassandra: no events, no message rows, no index rows.
        assert not await _rows(session, events_q, (uid, month))
        assert not await _rows(session, index_q, (erase.user_bucket(uid), uid))
        day = datetime.now(timezone.utc).date()
        log_q = (f"SELECT user_id FROM {ks}.message_log WHERE campaign_id = %s AND day = %s AND shard = %s"
                 " AND user_id = %s ALLOW FILTERING")
        assert not await _rows(session, log_q, (cid, day, log_shard(uid), uid))
        assert await _rows(session, log_q, (cid, day, log_shard(other), other))  # the other recipient's rows stay
        # Redis.
        assert not await pipeline_redis.exists(keys.inbox_key(uid), keys.touch_key(uid))
        # Kafka: the profile's latest record is a tombstone; the gate's buckets held them and no longer do.
        key = preference_key(uid)
        assert (await _latest(settings, USER_PROFILES, p, changelogs[USER_PROFILES.name], key))[-1] is None
        bucket = orjson.dumps(gate_rules.bucket_key(p, uid))  # the tables' keys are JSON in their changelogs
        for spec in (GATE_HISTORY, GATE_PREFERENCES):
            values = await _latest(settings, spec, p, changelogs[spec.name], bucket)
            assert any(v and str(uid).encode() in v for v in values), spec.name  # the state existed
            last = values[-1]
            assert last is None or str(uid) not in orjson.loads(last), spec.name
        assert api.get(f"/api/v1/users/{uid}/export", headers=admin).status_code == 404
        audit = await pipeline_pool.fetch("SELECT action FROM audit_log WHERE entity_type = 'user' AND entity_id = $1",
                                          str(uid))
        assert {r["action"] for r in audit} == {"export", "erase"}

        # A message for them afterwards is refused by the gate.
        starts = await _starts(settings, DELIVERY_EVENTS.name)
        await _send(settings, MESSAGE_REQUESTS.name, p, b"k",
                    encode(_batch(cid, p, [uid], f"erase-after:{cid}:{p}", step="later")))
        records = await _read(settings, starts, cid, events=2)
        assert _outcomes(_events(records, cid), "in_app", step="later") == {uid: ("suppressed", "erased")}

        # The old profile again (not a new sign-up) does not bring them back; a later record of the same
        # partition shows the worker got past it.
        await _send(settings, USER_PROFILES.name, p, key, encode(profile))
        await _send(settings, USER_PROFILES.name, p, preference_key(other),
                    encode(UserProfile(user_id=other, first_name="After")))
        await eventually(lambda: pipeline_pool.fetchval(
            "SELECT first_name = 'After' FROM users WHERE user_id = $1", other))
        assert await pipeline_pool.fetchval("SELECT count(*) FROM users WHERE user_id = $1", uid) == 0
        # A new sign-up (created after the erasure) is a person again.
        await _send(settings, USER_PROFILES.name, p, key,
                    encode(UserProfile(user_id=uid, first_name="New", created_at=datetime.now(timezone.utc))))
        await eventually(lambda: pipeline_pool.fetchval("SELECT first_name = 'New' FROM users WHERE user_id = $1",
                                                        uid))
    finally:
        await asyncio.to_thread(cluster.shutdown)


async def _rows(session, query: str, params: tuple) -> list:
    return list(await run_async(session, query, params))


def _signing(settings) -> bytes:
    from pipeline.signing import signing_key

    return signing_key(settings)

"""Profiles and events produced to Kafka reach PostgreSQL and Cassandra through the
real worker; malformed records go to the dead-letter topic and the stream goes on."""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from datetime import datetime, timezone

import asyncpg
import orjson

from pipeline.pii import contact_of
from pipeline.pii_keys import pii_keyring
from pipeline.stores.cassandra import connect, run_async
from tests.helpers.kafka import end_offsets, eventually, produce, read_from


def _user_id() -> int:
    return random.randrange(10**12, 2 * 10**12)


async def _fetch_user(dsn: str, user_id: int):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)
    finally:
        await conn.close()


async def test_a_profile_produced_to_kafka_appears_in_postgres(settings, worker):
    user_id = _user_id()
    profile = {"user_id": user_id, "email": f"ada{user_id}@example.com", "first_name": "Ada",
               "country": "gb", "language": "en-GB", "timezone": "Europe/London",
               "attributes": {"plan": "pro", "lifetime_value": 1250.5}, "push_tokens": ["tok-1"]}
    await produce(settings.kafka_brokers, "user-profiles", [(str(user_id).encode(), orjson.dumps(profile))])

    row = await eventually(lambda: _fetch_user(settings.postgres_dsn, user_id))
    assert contact_of(pii_keyring(settings), row) == (f"ada{user_id}@example.com", None)
    assert row["country"] == "GB"
    assert row["timezone"] == "Europe/London"
    assert orjson.loads(row["attributes"]) == {"plan": "pro", "lifetime_value": 1250.5}


async def test_an_older_profile_does_not_overwrite_a_newer_one(settings, worker):
    user_id = _user_id()
    newer = {"user_id": user_id, "first_name": "New", "updated_at": "2026-11-02T00:00:00Z"}
    older = {"user_id": user_id, "first_name": "Old", "updated_at": "2026-11-01T00:00:00Z"}
    marker_id = _user_id()
    marker = {"user_id": marker_id, "first_name": "Marker"}
    key = str(user_id).encode()
    await produce(settings.kafka_brokers, "user-profiles",
                  [(key, orjson.dumps(newer)), (key, orjson.dumps(older)),
                   (str(marker_id).encode(), orjson.dumps(marker))])
    await eventually(lambda: _fetch_user(settings.postgres_dsn, marker_id))
    row = await eventually(lambda: _fetch_user(settings.postgres_dsn, user_id))
    assert row["first_name"] == "New"


async def test_an_event_produced_to_kafka_appears_in_cassandra(settings, worker):
    user_id = _user_id()
    event_id = uuid.uuid4()
    event = {"event_id": str(event_id), "user_id": user_id, "name": "purchase",
             "occurred_at": datetime.now(timezone.utc).isoformat(), "revenue": "49.90",
             "properties": {"order_id": "o-17", "items": 2}}
    await produce(settings.kafka_brokers, "user-events", [(str(user_id).encode(), orjson.dumps(event))])

    cluster, session = await asyncio.to_thread(connect, settings)
    try:
        async def stored():
            rows = await run_async(session, f"SELECT * FROM {settings.cassandra_keyspace}.user_events "
                                            "WHERE user_id = %s AND month = %s",
                                   (user_id, datetime.now(timezone.utc).strftime("%Y-%m")))
            return list(rows)
        rows = await eventually(stored)
    finally:
        cluster.shutdown()
    assert [(r.event_id, r.event_type, str(r.revenue), dict(r.metadata)) for r in rows] == [
        (event_id, "purchase", "49.90", {"order_id": "o-17", "items": "2"})
    ]


async def test_a_malformed_record_is_dead_lettered_and_the_next_good_one_still_arrives(settings, worker):
    bad_id, good_id = _user_id(), _user_id()
    offsets = await end_offsets(settings.kafka_brokers, "dead-letters")
    bad = orjson.dumps({"user_id": bad_id, "email": "not-an-address", "timezone": "Mars/Olympus"})
    good = orjson.dumps({"user_id": good_id, "email": f"ok{good_id}@example.com"})
    # Same key, so both land in one partition in this order.
    await produce(settings.kafka_brokers, "user-profiles",
                  [(b"same-key", bad), (b"same-key", b"{not json"), (b"same-key", good)])

    row = await eventually(lambda: _fetch_user(settings.postgres_dsn, good_id))
    assert contact_of(pii_keyring(settings), row)[0] == f"ok{good_id}@example.com"
    assert await _fetch_user(settings.postgres_dsn, bad_id) is None

    mine = lambda letters: [d for d in letters if d["source_topic"] == "user-profiles"
                            and base64.b64decode(d["key"]) == b"same-key"
                            and base64.b64decode(d["value"]) in (bad, b"{not json")]
    letters = mine(await read_from(settings.kafka_brokers, offsets, lambda ls: len(mine(ls)) >= 2))
    reasons = {base64.b64decode(d["value"]): d["reason"] for d in letters}
    assert "email: not an email address" in reasons[bad]
    assert "timezone: not an IANA time zone" in reasons[bad]
    assert reasons[b"{not json"].startswith("not JSON")
    assert all(d["stage"] == "ingest_profiles" for d in letters)

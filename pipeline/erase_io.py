"""Erasure and export: every store call (the decisions and the whole design are in pipeline/erase.py).

    PostgreSQL  erasures, erased_users, users, user_preferences, segment_members, launch_audiences,
                unsubscribes, audit_log (read for the export)
    Cassandra   user_events (by (user, month)), message_log (found through message_log_by_user)
    Redis       touch:{user}, inbox:{user}, flow:{flow}:exit:{user}
    Kafka       tombstones on user-profiles and preference-updates; one UserErasure on user-erasures;
                the journey_state changelog read for the export (the user's partition, their last record)

``user_profile`` is the one reader of a person's ``users`` row (the export and the erasure's address
hashes read it), so that a profile stored encrypted is decrypted in one place.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime, timezone
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import audit, pii
from pipeline import erase as decide
from pipeline.codecs import Decoded
from pipeline.metrics import log_shard
from pipeline.partitioning import user_partition
from pipeline.signing import signing_key
from pipeline.stores.cassandra import run_async
from pipeline.worker_clients import WorkerClients
from schemas.encoding import to_json
from schemas.keys import flow_exit_key, inbox_key, touch_key
from schemas.preferences import preference_key
from schemas.topics import JOURNEY_STATE, PREFERENCE_UPDATES, USER_ERASURES, USER_PROFILES

# How far back user_events months and message_log days are looked for (the time series' retention).
LOOKBACK_DAYS = 400
# Records of erased users the ingest stages dropped, per stage, since the process started.
DROPPED: Counter[str] = Counter()
log = structlog.get_logger("herald.erase")
_IN_FLIGHT = 32


# ── reading a person ──────────────────────────────────────────────────────────


async def user_profile(conn: asyncpg.Connection | asyncpg.Pool, keyring: pii.Keyring,
                       user_id: int) -> dict[str, Any] | None:
    """The person's ``users`` row as plain values (address and number decrypted), or None. The one reader
    of a profile."""
    row = await conn.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)
    if row is None:
        return None
    out = dict(row)
    out["email"], out["phone"] = pii.contact_of(keyring, out)
    for column in ("email_enc", "email_idx", "phone_enc", "phone_idx"):
        out.pop(column, None)
    for column in ("attributes", "push_tokens"):
        if isinstance(out.get(column), str):
            out[column] = orjson.loads(out[column])
    return out


async def erased_markers(pool: asyncpg.Pool, key: bytes, user_ids: list[int]) -> dict[int, datetime]:
    """Of ``user_ids``, those marked erased, with when."""
    if not user_ids:
        return {}
    by_hash = {decide.user_marker(key, uid): uid for uid in set(user_ids)}
    rows = await pool.fetch("SELECT user_hash, erased_at FROM erased_users WHERE user_hash = ANY($1::bytea[])",
                            list(by_hash))
    return {by_hash[bytes(r["user_hash"])]: r["erased_at"] for r in rows}


class ErasedCheck:
    """Which of some users are erased, for the stages that write a person's state after the gate
    (message_log, touches, inboxes). Asked AFTER the write: an erasure whose marker the check does not
    see committed its marker after the write, so its own deletions (which follow the marker) find the
    write; one whose marker it sees is undone by the writer. Either way nothing of the person is left."""

    def __init__(self, clients: WorkerClients) -> None:
        self.clients = clients
        self.key = decide.marker_key(signing_key(clients.settings))

    async def among(self, user_ids: Iterable[int]) -> set[int]:
        ids = sorted({int(u) for u in user_ids if u is not None})
        return set(await erased_markers(await self.clients.postgres(), self.key, ids)) if ids else set()


async def forget_markers(pool: asyncpg.Pool, key: bytes, user_ids: list[int]) -> None:
    """New sign-ups: the users exist again."""
    if user_ids:
        await pool.execute("DELETE FROM erased_users WHERE user_hash = ANY($1::bytea[])",
                           [decide.user_marker(key, uid) for uid in user_ids])


# ── the erasure row ───────────────────────────────────────────────────────────


async def erasure(pool: asyncpg.Pool, erasure_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT erasure_id, user_id, requested_at, stores, done_at FROM erasures"
                               " WHERE erasure_id = $1", erasure_id)


async def report(pool: asyncpg.Pool, erasure_id: uuid.UUID, updates: dict[str, str]) -> None:
    """Merge store states into the erasure row; set done_at once every store is done."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT stores FROM erasures WHERE erasure_id = $1 FOR UPDATE", erasure_id)
        if row is None:
            return
        states = decide.settle(orjson.loads(row["stores"]), updates)
        await conn.execute(
            "UPDATE erasures SET stores = $2::jsonb,"
            " done_at = CASE WHEN $3 THEN COALESCE(done_at, now()) ELSE NULL END WHERE erasure_id = $1",
            erasure_id, to_json(states), decide.all_done(states))


# ── erasing, store by store ───────────────────────────────────────────────────


async def erase_postgres(pool: asyncpg.Pool, key: bytes, keyring: pii.Keyring, user_id: int,
                         actor: Any) -> uuid.UUID:
    """Record the erasure and the marker, and delete or detach every row about the person, in one
    transaction with its audit row. Returns the erasure id."""
    erasure_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        profile = await user_profile(conn, keyring, user_id)
        await conn.execute(
            "INSERT INTO erasures (erasure_id, user_id, requested_by, stores) VALUES ($1, $2, $3, $4::jsonb)",
            erasure_id, user_id, getattr(actor, "name", actor), to_json(decide.initial_states()))
        await conn.execute(
            "INSERT INTO erased_users (user_hash) VALUES ($1) ON CONFLICT (user_hash) DO UPDATE SET erased_at = now()",
            decide.user_marker(key, user_id))
        for unsub in await conn.fetch("SELECT unsubscribe_id, email, email_enc, channel FROM unsubscribes WHERE user_id = $1",
                                      user_id):
            address = pii.contact_of(keyring, unsub)[0] or (profile or {}).get("phone" if unsub["channel"] == "sms" else "email")
            await conn.execute(
                "UPDATE unsubscribes SET user_id = NULL, email = NULL, email_enc = NULL, email_idx = NULL,"
                " address_hash = $2 WHERE unsubscribe_id = $1",
                unsub["unsubscribe_id"], decide.address_hash(key, address) if address else None)
        await conn.execute("DELETE FROM segment_members WHERE user_id = $1", user_id)
        await conn.execute("DELETE FROM user_preferences WHERE user_id = $1", user_id)
        await conn.execute("DELETE FROM users WHERE user_id = $1", user_id)
        await _erase_launch_audiences(conn)
        await audit.record(conn, actor, "erase", "user", user_id, None, {"erasure_id": str(erasure_id)})
    return erasure_id


async def _erase_launch_audiences(conn: asyncpg.Connection) -> None:
    """A finished launch keeps no audience (pipeline/explode_io.py drops it when done); rows finished before
    that rule lose theirs here, instead of each erasure rewriting every audience that holds its person.
    A launch still exploding keeps its audience (its checkpoint counts positions in it); the gate and the
    senders refuse the erased user's messages instead."""
    await conn.execute("UPDATE launch_audiences SET members = NULL, language_codes = NULL"
                       " WHERE state <> 'exploding' AND members IS NOT NULL")


async def erase_events(session, keyspace: str, user_id: int, today: date | None = None) -> None:
    """Delete the user's user_events partitions of every month in the lookback."""
    statement = session.prepare(f"DELETE FROM {keyspace}.user_events WHERE user_id = ? AND month = ?")
    months = decide.months_back(today or datetime.now(timezone.utc).date(), LOOKBACK_DAYS)
    await asyncio.gather(*(run_async(session, statement, (user_id, m)) for m in months))


async def user_messages(session, keyspace: str, user_id: int) -> list[dict[str, Any]]:
    """The user's message_log rows, found through message_log_by_user."""
    index = await run_async(session, f"SELECT campaign_id, day FROM {keyspace}.message_log_by_user"
                            " WHERE user_bucket = %s AND user_id = %s", (decide.user_bucket(user_id), user_id))
    select = session.prepare(
        f"SELECT campaign_id, day, shard, sent_at, message_id, user_id, channel, variant, status, delivered_at,"
        f" error_message, metadata FROM {keyspace}.message_log WHERE campaign_id = ? AND day = ? AND shard = ?"
        " AND user_id = ? ALLOW FILTERING")
    found = await asyncio.gather(*(run_async(session, select, (r.campaign_id, r.day, log_shard(user_id), user_id))
                                   for r in index))
    return [row._asdict() for rows in found for row in rows]


async def erase_messages(session, keyspace: str, user_id: int) -> None:
    """Delete the user's message_log rows, then their index rows."""
    rows = await user_messages(session, keyspace, user_id)
    delete = session.prepare(f"DELETE FROM {keyspace}.message_log WHERE campaign_id = ? AND day = ? AND shard = ?"
                             " AND sent_at = ? AND message_id = ?")
    for i in range(0, len(rows), _IN_FLIGHT):
        await asyncio.gather(*(run_async(session, delete, (r["campaign_id"], r["day"], r["shard"], r["sent_at"],
                                                           r["message_id"])) for r in rows[i:i + _IN_FLIGHT]))
    await run_async(session, f"DELETE FROM {keyspace}.message_log_by_user WHERE user_bucket = %s AND user_id = %s",
                    (decide.user_bucket(user_id), user_id))


async def flows(pool: asyncpg.Pool) -> list[str]:
    """Every flow a user can have exited: journeys "j{id}" and triggered campaigns "c{id}"."""
    rows = await pool.fetch("SELECT 'j' || journey_id AS flow FROM journeys"
                            " UNION ALL SELECT 'c' || campaign_id FROM campaigns WHERE trigger IS NOT NULL")
    return [r["flow"] for r in rows]


async def erase_redis(redis: aioredis.Redis, flow_ids: list[str], user_id: int) -> None:
    keys = [touch_key(user_id), inbox_key(user_id), *(flow_exit_key(f, user_id) for f in flow_ids)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i:i + 1000])


async def publish_tombstones(producer, erasure_id: uuid.UUID, user_id: int) -> None:
    """Tombstones on the compacted per-user topics, then the erasure for the worker owning the user."""
    key = preference_key(user_id)
    await asyncio.gather(producer.send_and_wait(USER_PROFILES.name, None, key=key),
                         producer.send_and_wait(PREFERENCE_UPDATES.name, None, key=key))
    record = orjson.dumps({"erasure_id": str(erasure_id), "user_id": user_id})
    await producer.send_and_wait(USER_ERASURES.name, record, key=key)


# ── the export ────────────────────────────────────────────────────────────────


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _rows(rows) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in dict(r).items()} for r in rows]


async def journey_state(brokers: str, user_id: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """The user's place in every flow, as the workers' ``journey_state`` table last wrote it: their last record
    in the table's changelog (the partition of their key; compacted, so about one record per user in it)."""
    tp = TopicPartition(JOURNEY_STATE.name, user_partition(user_id, JOURNEY_STATE.partitions))
    key = b'"' + str(user_id).encode() + b'"'  # the table's key codec (tables/journey_state.py)
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        latest: bytes | None = None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while await consumer.position(tp) < end:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"reading {tp.topic} partition {tp.partition} took over {timeout_s} s")
            for records in (await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)).values():
                for record in records:
                    if record.key == key:
                        latest = record.value
        return orjson.loads(latest) if latest else {}
    finally:
        await consumer.stop()


async def export_user(pool: asyncpg.Pool, keyring: pii.Keyring, session, keyspace: str, redis: aioredis.Redis,
                      user_id: int, today: date | None = None,
                      journeys: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Everything Herald holds about the person, or None when it holds no profile of them."""
    profile = await user_profile(pool, keyring, user_id)
    if profile is None:
        return None
    preferences = await pool.fetchrow("SELECT * FROM user_preferences WHERE user_id = $1", user_id)
    segments = await pool.fetch("SELECT m.segment_id, s.name, m.added_at FROM segment_members m"
                                " JOIN segments s ON s.segment_id = m.segment_id WHERE m.user_id = $1", user_id)
    unsubscribes = [
        {**{k: v for k, v in dict(row).items() if k not in ("email_enc", "email_idx")},
         "email": pii.contact_of(keyring, row)[0]}
        for row in await pool.fetch("SELECT channel, email, email_enc, reason, campaign_id, source, unsubscribed_at"
                                    " FROM unsubscribes WHERE user_id = $1", user_id)]
    audit_rows = await pool.fetch(
        "SELECT audit_id, actor, action, entity_type, entity_id, before, after, occurred_at FROM audit_log"
        " WHERE entity_type IN ('user', 'user_preferences') AND entity_id = $1 ORDER BY audit_id", str(user_id))
    months = decide.months_back(today or datetime.now(timezone.utc).date(), LOOKBACK_DAYS)
    events_select = session.prepare(f"SELECT * FROM {keyspace}.user_events WHERE user_id = ? AND month = ?")
    events = await asyncio.gather(*(run_async(session, events_select, (user_id, m)) for m in months))
    touches = await redis.hgetall(touch_key(user_id))
    inbox = await redis.lrange(inbox_key(user_id), 0, -1)
    return {
        "user_id": user_id,
        "exported_at": datetime.now(timezone.utc),
        "profile": {k: _plain(v) for k, v in profile.items()},
        "preferences": {k: _plain(v) for k, v in dict(preferences).items()} if preferences else None,
        "segments": _rows(segments),
        "unsubscribes": _rows(unsubscribes),
        "events": [row._asdict() for rows in events for row in rows],
        "messages": await user_messages(session, keyspace, user_id),
        "last_messages": {k.decode(): v.decode() for k, v in touches.items()},
        "inbox": [_plain(item.decode()) for item in inbox],
        "journeys": journeys or {},
        "audit": _rows(audit_rows),
    }



# ── no resurrection: the ingest stages' filter ────────────────────────────────


async def drop_erased(pool: asyncpg.Pool, key: bytes, decoded: Decoded, stage: str) -> Decoded:
    """``decoded`` without the records of erased users (dropped and counted, not dead-lettered); a new
    sign-up's profile (created after the erasure) is kept and clears the user's marker."""
    if not decoded.records:
        return decoded
    markers = await erased_markers(pool, key, [r.user_id for r in decoded.records])
    if not markers:
        return decoded
    keep, signups = decide.screen_erased(
        [(r.user_id, getattr(r, "created_at", None)) for r in decoded.records], markers)
    await forget_markers(pool, key, sorted(signups))
    DROPPED[stage] += keep.count(False)
    log.info("records of erased users dropped", stage=stage, dropped=keep.count(False), total=DROPPED[stage])
    return Decoded([r for r, k in zip(decoded.records, keep) if k], [s for s, k in zip(decoded.sources, keep) if k],
                   decoded.dead)

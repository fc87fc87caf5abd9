"""Retention on the real Cassandra and PostgreSQL: the migrate step sets message_log's and user_events'
default_time_to_live from the settings and is idempotent, a row written by Herald's own writer carries that
TTL, and the audit purge deletes rows past their retention and keeps the rest."""

from __future__ import annotations

import asyncio
import random
import secrets
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg

from pipeline.retention import RETAINED_TABLES, row_ttl_s
from pipeline.retention_io import apply_table_ttls, purge_audit
from pipeline.stores.cassandra import EventWriter, connect
from schemas.records import UserEvent
from scripts.migrate import migrate_cassandra


def _table_ttls(session, keyspace: str) -> dict[str, int]:
    rows = session.execute("SELECT table_name, default_time_to_live FROM system_schema.tables"
                           " WHERE keyspace_name = %s", (keyspace,))
    return {r.table_name: r.default_time_to_live for r in rows}


async def test_migrate_sets_the_tables_ttl_once_and_a_written_row_carries_it(settings):
    first = await asyncio.to_thread(migrate_cassandra, settings)
    again = await asyncio.to_thread(migrate_cassandra, settings)
    assert again <= first  # the second run has nothing left to alter
    cluster, session = connect(settings)
    try:
        assert apply_table_ttls(settings, session) == []  # already as configured: no ALTER
        ttls = _table_ttls(session, settings.cassandra_keyspace)
        assert {t: ttls[t] for t in RETAINED_TABLES} == {t: row_ttl_s(settings) for t in RETAINED_TABLES}
        assert ttls["campaign_metrics"] == 0  # aggregates, no personal data: kept

        user_id = random.randrange(5 * 10**12, 6 * 10**12)
        event = UserEvent(user_id=user_id, name="product_viewed", occurred_at=datetime.now(timezone.utc))
        await EventWriter(session, settings.cassandra_keyspace).write([event])
        row = session.execute(f"SELECT TTL(event_type) AS ttl FROM {settings.cassandra_keyspace}.user_events"
                              " WHERE user_id = %s AND month = %s", (user_id, event.occurred_at.strftime("%Y-%m"))).one()
        assert row_ttl_s(settings) - 120 <= row.ttl <= row_ttl_s(settings)
        session.execute(f"DELETE FROM {settings.cassandra_keyspace}.user_events WHERE user_id = %s AND month = %s",
                        (user_id, event.occurred_at.strftime("%Y-%m")))
    finally:
        cluster.shutdown()


async def test_a_changed_retention_is_applied_and_then_left_alone(settings):
    """Another retention on a keyspace of the test's own, so the shared tables keep theirs."""
    keyspace = f"herald_retention_{secrets.token_hex(3)}"
    mine = settings.model_copy(update={"cassandra_keyspace": keyspace, "retention_days": 7})
    await asyncio.to_thread(migrate_cassandra, mine)
    cluster, session = connect(settings)
    try:
        assert {t: _table_ttls(session, keyspace)[t] for t in RETAINED_TABLES} == dict.fromkeys(RETAINED_TABLES,
                                                                                               7 * 86_400)
        longer = mine.model_copy(update={"retention_days": 90})
        assert apply_table_ttls(longer, session) == list(RETAINED_TABLES)
        assert apply_table_ttls(longer, session) == []
        assert _table_ttls(session, keyspace)["message_log"] == 90 * 86_400
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        cluster.shutdown()


async def test_the_audit_purge_deletes_rows_past_retention_and_keeps_the_rest(settings):
    actor = f"retention-test-{secrets.token_hex(4)}"
    now = datetime.now(timezone.utc)
    conn = await asyncpg.connect(settings.postgres_dsn)
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=2)
    try:
        ages = {"old": 401, "edge": 399, "recent": 1}
        for entity, days in ages.items():
            await conn.execute("INSERT INTO audit_log (actor, action, entity_type, entity_id, occurred_at)"
                               " VALUES ($1, 'test', 'retention', $2, $3)", actor, entity, now - timedelta(days=days))
        deleted = await purge_audit(settings.model_copy(update={"audit_retention_days": 400}), pool, now)
        assert deleted >= 1
        left = {r["entity_id"] for r in await conn.fetch("SELECT entity_id FROM audit_log WHERE actor = $1", actor)}
        assert left == {"edge", "recent"}
        assert await purge_audit(settings.model_copy(update={"audit_retention_days": 400}), pool, now) == 0
    finally:
        await conn.execute("DELETE FROM audit_log WHERE actor = $1", actor)
        await conn.close()
        await pool.close()

"""Retention's store calls: the Cassandra tables' TTLs, and the audit log's purge (rules: pipeline/retention.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from config import Settings
from pipeline.retention import PURGE_BATCH, audit_cutoff, row_ttl_s, tables_to_alter


def apply_table_ttls(settings: Settings, session) -> list[str]:
    """Set message_log's and user_events' default_time_to_live to the configured retention; idempotent.

    Returns the tables altered now (none when they already had it). A new TTL applies to rows written
    from then on; rows already written keep the TTL they were written with."""
    keyspace = settings.cassandra_keyspace
    rows = session.execute("SELECT table_name, default_time_to_live FROM system_schema.tables"
                           " WHERE keyspace_name = %s", (keyspace,))
    current = {row.table_name: row.default_time_to_live for row in rows}
    altered = tables_to_alter(settings, current)
    for table in altered:
        session.execute(f"ALTER TABLE {keyspace}.{table} WITH default_time_to_live = {row_ttl_s(settings)}",
                        timeout=60)
    return altered


async def purge_audit(settings: Settings, pool: asyncpg.Pool, now: datetime | None = None) -> int:
    """Delete audit rows past their retention, ``PURGE_BATCH`` at a time (audit_log_occurred_idx finds them);
    returns how many. Any number of workers may run it at once: a row is deleted once, whoever gets it."""
    cutoff = audit_cutoff(settings, now or datetime.now(timezone.utc))
    total = 0
    while True:
        result = await pool.execute(
            "DELETE FROM audit_log WHERE audit_id IN (SELECT audit_id FROM audit_log WHERE occurred_at < $1"
            " ORDER BY occurred_at LIMIT $2 FOR UPDATE SKIP LOCKED)", cutoff, PURGE_BATCH)
        deleted = int(result.split()[-1])
        total += deleted
        if deleted < PURGE_BATCH:
            return total

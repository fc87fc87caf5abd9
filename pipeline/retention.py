"""How long Herald keeps what it stores: the rules, without I/O.

    Cassandra message_log, user_events   default_time_to_live = retention_days   (scripts/migrate.py)
    Kafka user-events, delivery-events   retention.ms ≤ retention_days, so a replay cannot write back,
                                         with a whole new TTL, what has expired  (schemas/topics.py)
    PostgreSQL audit_log                 rows older than audit_retention_days deleted, in batches,
                                         every audit_purge_every_s                (agents/retention.py)

A TTL runs from a row's write, so Cassandra forgets on its own, partition by partition, with no
job to run. The audit log sits in PostgreSQL, which has no TTL: a periodic purge does it there.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from config import Settings

RETAINED_TABLES = ("message_log", "user_events")  # time series of people's messages and behaviour
DAY_S = 86_400
PURGE_BATCH = 5_000  # rows per DELETE: short transactions, no long lock on audit_log


def row_ttl_s(settings: Settings) -> int:
    """Seconds a message_log or user_events row lives after it is written."""
    return settings.retention_days * DAY_S


def tables_to_alter(settings: Settings, current_ttl_s: dict[str, int]) -> list[str]:
    """The retained tables whose default_time_to_live is not the configured one (missing: altered too)."""
    return [table for table in RETAINED_TABLES if current_ttl_s.get(table) != row_ttl_s(settings)]


def audit_cutoff(settings: Settings, now: datetime) -> datetime:
    """Audit rows that occurred before this are past their retention."""
    return now - timedelta(days=settings.audit_retention_days)

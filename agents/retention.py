"""retention: audit-log rows older than ``audit_retention_days`` deleted, every ``audit_purge_every_s``.

Input: none (a loop in every worker; the first pass a minute after start, then once a period).
Output: none. Side effects: PostgreSQL ``audit_log`` rows deleted (pipeline/retention_io.py).
Cassandra's message_log and user_events need no job: their rows carry a TTL (scripts/migrate.py).
Idempotent and safe side by side: each worker's pass deletes what is past the cutoff, in short
batches with SKIP LOCKED, so two workers share the work instead of waiting for each other.
"""

from __future__ import annotations

import asyncio

import structlog

from pipeline.app import app, clients, settings
from pipeline.retention_io import purge_audit

log = structlog.get_logger("herald.retention")
FIRST_PASS_AFTER_S = 60.0  # not during a worker's start, when the stages are restoring their state


@app.task
async def purge_old_audit_rows() -> None:
    await asyncio.sleep(min(FIRST_PASS_AFTER_S, settings.audit_purge_every_s))
    while True:
        try:
            deleted = await purge_audit(settings, await clients.postgres())
            if deleted:
                log.info("audit rows past retention deleted", rows=deleted, days=settings.audit_retention_days)
        except asyncio.CancelledError:
            raise
        except Exception:  # PostgreSQL down: the next period tries again
            log.exception("audit purge failed")
        await asyncio.sleep(settings.audit_purge_every_s)

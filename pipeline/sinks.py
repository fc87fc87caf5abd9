"""Writing a decoded batch to a store without losing any of it.

A store that is down or slow is waited for (exponential backoff, the stream
pauses behind it); a record the store itself rejects is isolated by retrying the
batch record by record, and only that record becomes a dead letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from cassandra import OperationTimedOut, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable

from pipeline.codecs import Decoded, dead_letter
from schemas.records import DeadLetter

log = structlog.get_logger()
T = TypeVar("T")

TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    WriteTimeout,
)


def backoff_delays(base: float = 0.1, cap: float = 5.0):
    delay = base
    while True:
        yield delay
        delay = min(cap, delay * 2)


async def until_stored(write: Callable[[], Awaitable[T]], what: str) -> T:
    """Retry ``write`` through transient failures, as long as it takes."""
    for attempt, delay in enumerate(backoff_delays(), start=1):
        try:
            return await write()
        except TRANSIENT as exc:
            log.warning("store unavailable, retrying", what=what, attempt=attempt,
                        delay_s=delay, error=repr(exc))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def store_batch(decoded: Decoded[T], write: Callable[[list[T]], Awaitable[object]],
                      stage: str) -> list[DeadLetter]:
    """Write every decoded record; return dead letters for those the store refused."""
    if not decoded.records:
        return []
    try:
        await until_stored(lambda: write(decoded.records), stage)
        return []
    except TRANSIENT:
        raise
    except Exception as exc:  # a record the store refuses: find it, keep the rest
        log.warning("batch refused, isolating records", stage=stage, error=repr(exc))
    dead: list[DeadLetter] = []
    for record, raw in zip(decoded.records, decoded.sources):
        try:
            await until_stored(lambda r=record: write([r]), stage)
        except Exception as exc:
            dead.append(dead_letter(raw, stage, f"refused by the store: {exc}"))
    return dead

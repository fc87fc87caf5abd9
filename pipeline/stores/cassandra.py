"""Cassandra for the pipeline: an asyncio face on cassandra-driver, and the event writer."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from config import Settings
from schemas.records import UserEvent


def cluster(settings: Settings) -> Cluster:
    return Cluster(
        settings.cassandra_host_list,
        port=settings.cassandra_port,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc="datacenter1")),
            request_timeout=30.0,
        )},
    )


def connect(settings: Settings) -> tuple[Cluster, Session]:
    """A session with no keyspace set: statements name ``keyspace.table`` in full."""
    c = cluster(settings)
    return c, c.connect()


def run_async(session: Session, statement: Any, params: Any = None) -> asyncio.Future:
    """Run a statement on the driver's own threads; resolve an asyncio future with its rows
    (the first page, which is all the small reads and the writes here need)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def done(rows: Any) -> None:
        if not future.done():
            future.set_result(rows)

    def failed(exc: Exception) -> None:
        if not future.done():
            future.set_exception(exc)

    response = session.execute_async(statement, params)
    response.add_callbacks(
        callback=lambda rows: loop.call_soon_threadsafe(done, rows),
        errback=lambda exc: loop.call_soon_threadsafe(failed, exc),
    )
    return future


def event_month(event: UserEvent) -> str:
    return event.occurred_at.strftime("%Y-%m")


class EventWriter:
    """Writes user events: one unlogged batch per (user, month) partition, many in flight."""

    _INSERT = (
        "INSERT INTO {keyspace}.user_events (user_id, month, occurred_at, event_id, event_type, campaign_id,"
        " message_id, channel, revenue, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    def __init__(self, session: Session, keyspace: str, in_flight: int = 128) -> None:
        self.session = session
        self.insert: PreparedStatement = session.prepare(self._INSERT.format(keyspace=keyspace))
        self.in_flight = asyncio.Semaphore(in_flight)

    def statement(self, events: list[UserEvent]) -> BatchStatement:
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for e in events:
            metadata = {k: str(v) for k, v in e.properties.items() if v is not None}
            batch.add(self.insert, (
                e.user_id, event_month(e), e.occurred_at, e.stable_id(), e.name, e.campaign_id,
                e.message_id, e.channel, e.revenue, metadata,
            ))
        return batch

    async def write(self, events: list[UserEvent]) -> int:
        partitions: dict[tuple[int, str], list[UserEvent]] = defaultdict(list)
        for event in events:
            partitions[(event.user_id, event_month(event))].append(event)

        async def one(group: list[UserEvent]) -> None:
            async with self.in_flight:
                await run_async(self.session, self.statement(group))

        await asyncio.gather(*(one(group) for group in partitions.values()))
        return len(events)

"""Bulk consumption for the high-volume ingest topics, inside the Faust worker.

Why not a plain Faust agent here: measured on this 2-core machine, a Faust stream
costs about 200 µs of CPU per event (no-op agent, Cython streams enabled), while
aiokafka's ``getmany`` hands over a batch at about 2 µs per record. Upstream
systems write one profile or event per record, so a Faust agent over these topics
tops out near 5,000 records/s per worker. These loops read the same topics as a
Kafka consumer group of their own (``<app_id>.<stage>``), so they still scale out
by partitions and workers, and they run as tasks of the Faust worker process.

Delivery is at-least-once: offsets are committed only after ``handle`` has stored
the batch; a crash replays the uncommitted tail, and the writers are idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from config import Settings
from pipeline.codecs import RawRecord

log = structlog.get_logger()

Handler = Callable[[list[RawRecord]], Awaitable[None]]


# aiokafka lets a rebalance wait only ``session_timeout_ms`` (10 s) for members by default.
# A member that is still finishing its batches (a sender draining in-flight sends before
# it gives its partitions up) is then dropped, its commits fail and the next owner sends
# those batches again: measured here, the send_email group rebalanced over and over and
# the peers saw thousands of duplicates. Give a rebalance two minutes and the session 30 s.
GROUP_TIMEOUTS = {
    "session_timeout_ms": 30_000,
    "heartbeat_interval_ms": 3_000,
    "rebalance_timeout_ms": 120_000,
    "max_poll_interval_ms": 600_000,
}
# Stages whose handling is idempotent (the aggregate's fold counts each (message, status) once; its log rows
# and touches are rewritten the same): a batch handled twice costs nothing, so a worker killed mid-batch is
# replaced after 6 s instead of 30, and the live counters stall that long, not half a minute.
IDEMPOTENT_TIMEOUTS = {
    "session_timeout_ms": 6_000,
    "heartbeat_interval_ms": 1_000,
    "rebalance_timeout_ms": 30_000,
    "max_poll_interval_ms": 600_000,
}


Topics = str | Callable[[], Sequence[str]]


async def consume_in_batches(settings: Settings, topic: Topics, stage: str, handle: Handler,
                             stop: asyncio.Event | None = None, timeouts: dict | None = None) -> None:
    """Feed ``handle`` batches of raw records from ``topic`` until cancelled or ``stop`` is set.

    ``topic`` may be a function giving the topics to read: when what it gives changes, the
    consumer returns (``run_forever`` starts it again on the new topics)."""
    topics = (topic,) if isinstance(topic, str) else tuple(sorted(topic()))
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_brokers,
        group_id=f"{settings.app_id}.{stage}",
        client_id=f"{settings.app_id}.{stage}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **(timeouts or GROUP_TIMEOUTS),
    )
    await consumer.start()
    log.info("bulk consumer started", topic=topic, stage=stage)
    try:
        while stop is None or not stop.is_set():
            if not isinstance(topic, str) and tuple(sorted(topic())) != topics:
                log.info("bulk consumer's topics changed; restarting", stage=stage, topics=sorted(topic()))
                return
            batch = await consumer.getmany(
                timeout_ms=int(settings.worker_batch_seconds * 1000), max_records=settings.worker_batch_size
            )
            raws = [
                RawRecord(m.topic, m.partition, m.offset, m.key, m.value)
                for messages in batch.values()
                for m in messages
            ]
            if not raws:
                continue
            await handle(raws)
            try:
                await consumer.commit()
            except CommitFailedError:
                # Partitions moved to another worker mid-batch: it replays from the last
                # commit, and the idempotent writers make the repeat harmless.
                log.warning("commit failed after rebalance; batch will be replayed", stage=stage)
    finally:
        await consumer.stop()


async def run_forever(settings: Settings, topic: Topics, stage: str, handle: Handler,
                      timeouts: dict | None = None) -> None:
    """``consume_in_batches``, restarted with backoff if Kafka or a handler fails."""
    delay = 0.5
    while True:
        try:
            await consume_in_batches(settings, topic, stage, handle, timeouts=timeouts)
            delay = 0.5
            continue
        except asyncio.CancelledError:
            raise
        except (KafkaError, OSError) as exc:
            log.warning("bulk consumer lost Kafka; restarting", stage=stage, error=repr(exc), delay_s=delay)
        except Exception:
            log.exception("bulk consumer crashed; restarting", stage=stage, delay_s=delay)
        await asyncio.sleep(delay)
        delay = min(10.0, delay * 2)

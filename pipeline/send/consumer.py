"""The send_<channel> worker's consumer: outbox batches as concurrent tasks, offsets committed behind the oldest.

    outbox.<channel> ──getmany──► one task per batch (at most ``sender_batches_in_flight``)
                                      └─► Sender.handle ─► events, dead letters (acknowledged)
                     ◄──commit─── below the oldest batch still in flight (``OffsetTracker``)

``run_sender`` builds one ``Sender`` per process over the worker's shared clients and keeps
its consumer running (restarting it with backoff); the agents (agents/send_<channel>.py)
call it with the emitters they own. While it runs, it tells the gate how far behind the
channel is (``QueueLag``) and holds its place in the gate's release window (``SenderSlots``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from redis.asyncio import Redis

from config import Settings
from pipeline.batch_consumer import GROUP_TIMEOUTS
from pipeline.channels import make_channel
from pipeline.codecs import RawRecord
from pipeline.pii_keys import pii_keyring
from pipeline.release_windows import SenderSlots
from pipeline.send.pacing import QueueLag
from pipeline.send.sender import (
    CampaignPlans,
    EmitDead,
    EmitEvents,
    PostgresProfiles,
    Sender,
    adapter_options,
    send_chunk,
)

log = structlog.get_logger()


async def run_sender(settings: Settings, channel: str, topic: str, emit_events: EmitEvents, emit_dead: EmitDead,
                     pool: Any, redis: Redis) -> None:
    """Consume ``topic`` (outbox.<channel>) in group ``<app_id>.send_<channel>`` until cancelled.

    ``pool`` and ``redis`` are the worker's shared clients (pipeline.app.clients), closed with
    the worker, not here; the provider adapter is this sender's own and closed on the way out.
    """
    adapter = make_channel(channel, settings, redis, **adapter_options(settings, channel))
    sender = Sender(settings, channel, redis, adapter, CampaignPlans(pool, settings, channel), PostgresProfiles(pool, pii_keyring(settings)),
                    emit_events, emit_dead, chunk=send_chunk(settings, channel))
    delay = 0.5
    try:
        while True:
            try:
                await consume_concurrently(settings, topic, sender, settings.sender_batches_in_flight)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sender consumer failed; restarting", stage=sender.stage, delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)
    finally:
        await adapter.aclose()


class OffsetTracker:
    """What may be committed per partition: below the oldest batch still in flight, else past the last fetched."""

    def __init__(self) -> None:
        self.pending: dict[Any, set[int]] = {}
        self.fetched: dict[Any, int] = {}
        self.committed: dict[Any, int] = {}

    def start(self, tp: Any, offset: int) -> None:
        self.pending.setdefault(tp, set()).add(offset)
        self.fetched[tp] = max(self.fetched.get(tp, -1), offset)

    def finish(self, tp: Any, offset: int) -> None:
        self.pending.get(tp, set()).discard(offset)

    def committable(self) -> dict[Any, int]:
        out = {}
        for tp, last in self.fetched.items():
            pending = self.pending.get(tp)
            offset = min(pending) if pending else last + 1
            if offset > self.committed.get(tp, -1):
                out[tp] = offset
        return out

    def forget(self, partitions: Any) -> None:
        for tp in partitions:
            self.pending.pop(tp, None)
            self.fetched.pop(tp, None)
            self.committed.pop(tp, None)


DRAIN_S = 90.0  # < GROUP_TIMEOUTS["rebalance_timeout_ms"]
ENDS_EVERY_S = 0.25  # how often a sender asks the broker for its outbox partitions' end offsets


async def consume_concurrently(settings: Settings, topic: str, sender: Sender, in_flight: int) -> None:
    """Each outbox batch is its own task, at most ``in_flight`` at once, offsets committed behind the oldest.

    Not ``pipeline.batch_consumer``'s poll-then-wait loop: a batch waiting out a provider's
    backoff (up to ``RetryPolicy``'s bound) must not stall the batches behind it.
    At-least-once: a crash replays from the oldest unfinished batch of each
    partition, and the ledger skips what was already acknowledged. A batch whose
    processing fails (Redis or PostgreSQL down) is retried with backoff, not dropped.
    """
    offsets = OffsetTracker()
    tasks: dict[asyncio.Task, Any] = {}

    async def drain() -> None:
        # Bounded well inside the rebalance timeout: a batch still waiting then (a slow
        # provider's backoff) is left to the next owner, whose ledger lookup skips what
        # this worker had acknowledged.
        if tasks:
            await asyncio.wait(list(tasks), timeout=DRAIN_S)

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):  # finish and commit before another worker takes over
            await drain()
            await commit()
            offsets.forget(revoked)

        async def on_partitions_assigned(self, assigned):
            return None

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_brokers, group_id=f"{settings.app_id}.{sender.stage}",
        client_id=f"{settings.app_id}.{sender.stage}", enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024, **GROUP_TIMEOUTS)

    async def commit() -> None:
        ready = offsets.committable()
        if ready:
            try:
                await consumer.commit(ready)
                offsets.committed.update(ready)
            except Exception as exc:  # noqa: BLE001 - a rebalance; the next owner replays, the ledger dedups
                log.warning("sender commit failed", stage=sender.stage, error=repr(exc))

    lag = QueueLag(sender.redis, sender.channel)
    slots = SenderSlots(sender.redis, sender.channel, in_flight, lag.token)

    async def one(raw: RawRecord) -> None:
        delay = 0.5
        while True:
            try:
                await sender.handle([raw])
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch failed; retrying", stage=sender.stage, partition=raw.partition,
                              offset=raw.offset, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    def done(task: asyncio.Task) -> None:
        tp, offset, _, key = tasks.pop(task)
        offsets.finish(tp, offset)
        lag.finished()
        slots.finished(key)  # its place in the gate's release window (pipeline/release_windows.py)

    async def waiting() -> int:
        """Records on the topic that this consumer has not started (end offsets asked of the broker)."""
        assigned = list(consumer.assignment())
        if not assigned:
            return 0
        ends = await consumer.end_offsets(assigned)
        count = 0
        for tp, end in ends.items():
            last = offsets.fetched.get(tp)
            position = last + 1 if last is not None else offsets.committed.get(tp)
            if position is not None:
                count += max(0, end - position)
        return count

    async def report_lag() -> None:
        every, last_ends, queued = lag.every_s, 0.0, 0
        while True:
            await asyncio.sleep(every)
            if len(tasks) >= in_flight:
                lag.saturated(min(t for _, _, t, _ in tasks.values()))
            now = time.monotonic()
            if now - last_ends >= ENDS_EVERY_S:
                last_ends = now
                try:
                    queued = await waiting()
                except Exception as exc:  # noqa: BLE001 - a broker hiccup: the other figures still count
                    log.warning("outbox backlog not read", stage=sender.stage, error=repr(exc))
                    queued = 0
            lag.queued(queued)
            lag.tick()
            slots.report()

    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    reporter = asyncio.ensure_future(report_lag())
    log.info("sender consumer started", topic=topic, stage=sender.stage)
    last_commit = time.monotonic()
    try:
        while True:
            free = in_flight - len(tasks)
            if free <= 0:
                await asyncio.wait(list(tasks), timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            else:
                polled = await consumer.getmany(timeout_ms=int(settings.worker_batch_seconds * 1000),
                                                max_records=free)
                for tp, messages in polled.items():
                    for m in messages:
                        offsets.start(tp, m.offset)
                        if not tasks:
                            lag.busy()
                        task = asyncio.ensure_future(one(RawRecord(m.topic, m.partition, m.offset, m.key, m.value)))
                        tasks[task] = (tp, m.offset, m.timestamp, m.key)
                        task.add_done_callback(done)
                        lag.picked_up(m.timestamp)
            if time.monotonic() - last_commit >= 0.5:
                await commit()
                last_commit = time.monotonic()
    finally:
        reporter.cancel()
        slots.withdraw()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.stop()

"""The tests' one way to talk to the real broker: produce, end offsets, and ONE reader (``read``).

``read`` reads records from given offsets, keeps those a filter accepts, and stops when a
condition holds or when every partition reached the offsets it was given to stop at. The other
readers are views of it: ``read_from`` (JSON values until a condition), ``read_campaign_records``
and ``read_campaign_range`` (one campaign's records), ``records_between`` (two end-offset
snapshots).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from config import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: Any  # the decoded JSON, or None when the bytes are not JSON
    raw: bytes | None


async def produce(brokers: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def end_offsets(brokers: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


def _decoded(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None


async def read(brokers: str, start: dict[TopicPartition, int], *,
               until: Callable[[list[Record]], bool] | None = None,
               stop_at: dict[TopicPartition, int] | None = None,
               keep: Callable[[Record], bool] = lambda record: True,
               timeout_s: float = 60.0) -> list[Record]:
    """The records from ``start`` on that ``keep`` accepts, read until ``until(kept)`` holds or, without
    ``until``, until each partition reached its ``stop_at`` offset (exclusive; records from there on are
    not read). Fails the test after ``timeout_s``."""
    if stop_at is not None:
        start = {tp: o for tp, o in start.items() if stop_at.get(tp, 0) > o}
    kept: list[Record] = []
    if until is None and not start:
        return kept
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        open_partitions = set(start) if stop_at is not None else set()
        deadline = time.monotonic() + timeout_s
        while not (until(kept) if until is not None else not open_partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s reading from {start}; kept {len(kept)} records")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    if stop_at is not None and m.offset >= stop_at[tp]:
                        continue
                    record = Record(tp.partition, m.offset, m.key, _decoded(m.value), m.value)
                    if keep(record):
                        kept.append(record)
                if stop_at is not None and messages and messages[-1].offset + 1 >= stop_at[tp]:
                    open_partitions.discard(tp)
        return kept
    finally:
        await consumer.stop()


async def read_from(brokers: str, offsets: dict[TopicPartition, int], until: Callable[[list[dict]], bool],
                    timeout_s: float = 60.0) -> list[dict]:
    """JSON values from ``offsets`` on until ``until(values)`` holds."""
    records = await read(brokers, offsets, until=lambda kept: until([r.value for r in kept]), timeout_s=timeout_s)
    return [r.value for r in records]


async def records_between(brokers: str, topic: str, before: dict[TopicPartition, int],
                          after: dict[TopicPartition, int]) -> list[tuple[bytes, dict]]:
    """(key, value) of every record written to ``topic`` between two end-offset snapshots."""
    records = await read(brokers, {tp: before.get(tp, 0) for tp in after if tp.topic == topic}, stop_at=after)
    return [(r.key, r.value) for r in records]


def of_campaign(campaign_id: int) -> Callable[[Record], bool]:
    """A record of this campaign: a batch that names it, or a DeliveryEventBatch with one of its events."""
    def keep(record: Record) -> bool:
        value = record.value
        if not isinstance(value, dict):
            return False
        if value.get("campaign_id") == campaign_id:
            return True
        return any(isinstance(e, dict) and e.get("campaign_id") == campaign_id for e in value.get("events") or ())
    return keep


async def read_campaign_records(settings: Settings, offsets: dict[TopicPartition, int], campaign_id: int,
                                until: Callable[[list[tuple[int, dict]]], bool], timeout_s: float = 60.0,
                                ) -> list[tuple[int, dict]]:
    """``(partition, record)`` of one campaign's records from ``offsets`` on (any topic), until ``until`` holds."""
    records = await read(settings.kafka_brokers, offsets, keep=of_campaign(campaign_id), timeout_s=timeout_s,
                         until=lambda kept: until([(r.partition, r.value) for r in kept]))
    return [(r.partition, r.value) for r in records]


async def read_campaign_range(settings: Settings, start: dict[TopicPartition, int], campaign_id: int,
                              timeout_s: float = 60.0) -> list[tuple[int, dict]]:
    """``(partition, record)`` of every record naming one campaign between ``start`` and the topic's end now."""
    end = await end_offsets(settings.kafka_brokers, next(iter(start)).topic)
    records = await read(settings.kafka_brokers, start, stop_at=end, timeout_s=timeout_s,
                         keep=lambda r: isinstance(r.value, dict) and r.value.get("campaign_id") == campaign_id)
    return [(r.partition, r.value) for r in records]


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 60.0, every_s: float = 0.25) -> T:
    """Await ``check()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s (last: {result!r})")
        await asyncio.sleep(every_s)

"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

T = TypeVar("T")


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


async def read_from(brokers: str, offsets: dict[TopicPartition, int], until: Callable[[list[dict]], bool],
                    timeout_s: float = 60.0) -> list[dict]:
    """Read JSON records from the given offsets on until ``until(records)`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list[dict] = []
    try:
        consumer.assign(list(offsets))
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s; read {records!r}")
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records += [orjson.loads(m.value) for m in messages]
        return records
    finally:
        await consumer.stop()


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

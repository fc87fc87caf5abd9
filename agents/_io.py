"""What every agent does at its edge: emit delivery events, and send what it could not process to the
dead letters.

``send_dead_letters`` and ``emit_events`` hand records to the worker's Faust producer; the
senders' ``publish_event_batch`` and ``publish_dead_letters`` also wait for Kafka's
acknowledgement (agents/send_<channel>.py pass them to pipeline/send/consumer.py's
``run_sender``, which never imports the Faust app)."""

from __future__ import annotations

import orjson

from pipeline.app import dead_letters_topic, delivery_events_topic
from schemas.encoding import encode
from schemas.messages import DeliveryEventBatch
from schemas.records import DeadLetter


async def send_dead_letters(dead: list[DeadLetter]) -> None:
    for letter in dead:
        await dead_letters_topic.send(
            key=f"{letter.source_topic}:{letter.partition}:{letter.offset}".encode(),
            value=encode(letter),
        )


async def emit_events(partition: int, events: list[dict]) -> None:
    """One ``delivery-events`` record of ``events`` (DeliveryEvent dicts) on ``partition``."""
    if events:
        await delivery_events_topic.send(key=b"gate", value=orjson.dumps({"events": events}), partition=partition)


async def publish_event_batch(partition: int, batch: DeliveryEventBatch) -> None:
    """The senders' events: one ``delivery-events`` record on ``partition``, once Kafka has acknowledged it.

    Waiting for the acknowledgement is what lets a sender commit a batch's offset only after its
    events are stored (pipeline/send/consumer.py)."""
    key = str(batch.events[0].campaign_id).encode() if batch.events else b"send"
    sent = await delivery_events_topic.send(key=key, value=encode(batch), partition=partition)
    await sent


async def publish_dead_letters(letters: list[DeadLetter]) -> None:
    """The senders' dead letters, each on its source partition, once Kafka has acknowledged every one."""
    futures = [await dead_letters_topic.send(key=f"{d.source_topic}:{d.partition}:{d.offset}".encode(),
                                             value=encode(d), partition=d.partition)
               for d in letters]
    for future in futures:
        await future

"""What every agent does at its edge: emit delivery events, and send what it could not process to the
dead letters.

``send_dead_letters`` and ``emit_events`` hand records to the worker's Faust producer; the
senders' ``publish_event_batch`` and ``publish_dead_letters`` also wait for Kafka's
acknowledgement (agents/send_<channel>.py pass them to pipeline/send/consumer.py's
``run_sender``, which never imports the Faust app)."""

from __future__ import annotations

import orjson

from pipeline.app import clients, dead_letters_topic, delivery_events_topic, settings
from pipeline.partitioning import per_user_records
from pipeline.send.consumer import run_sender
from schemas.encoding import encode
from schemas.messages import DeliveryEvent, DeliveryEventBatch
from schemas.records import DeadLetter
from schemas.topics import OUTBOX


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


async def publish_keyed_events(events: list[DeliveryEvent]) -> None:
    """Events of many users (conversions): one ``delivery-events`` record per user, keyed by the user id (the
    user's partition), once Kafka has acknowledged every one."""
    futures = [await delivery_events_topic.send(key=key, value=value) for key, value in per_user_records(events)]
    for future in futures:
        await future


async def publish_dead_letters(letters: list[DeadLetter]) -> None:
    """The senders' dead letters, each on its source partition, once Kafka has acknowledged every one."""
    futures = [await dead_letters_topic.send(key=f"{d.source_topic}:{d.partition}:{d.offset}".encode(),
                                             value=encode(d), partition=d.partition)
               for d in letters]
    for future in futures:
        await future


async def run_channel_sender(channel: str) -> None:
    """Every sender (agents/send_<channel>.py): ``outbox.<channel>`` → the channel's provider → events.

    Input: ``outbox.<channel>`` (``MessageBatch``, one campaign and partition, many recipients).
    Output, per batch: ONE ``DeliveryEventBatch`` (sent / bounced / failed, or held / cancelled) to
    ``delivery-events`` on the batch's partition; one dead letter per message that could not be sent
    (narrowed batch + reason).
    Redis: the channel's token bucket and queue lag, the batch claims and idempotency ledger,
    ``campaign:{id}:held``.
    At least once: a batch's offset is committed after its events and dead letters are acknowledged,
    and a replay skips what the idempotency ledger says the provider already accepted. The loop is
    pipeline/send/'s (consumer.py runs sender.py's ``Sender``) over the worker's shared clients.
    """
    await run_sender(settings, channel, OUTBOX[channel].name, publish_event_batch, publish_dead_letters,
                     await clients.postgres(), clients.redis())

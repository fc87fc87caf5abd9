"""What every agent does at its edge: emit delivery events, and send what it could not process to the
dead letters."""

from __future__ import annotations

import orjson

from pipeline.app import dead_letters_topic, delivery_events_topic
from schemas.encoding import encode
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

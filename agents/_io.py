"""What every agent does at its edges: read raw events, send dead letters."""

from __future__ import annotations

from collections.abc import Sequence

from faust.types import EventT

from pipeline.app import dead_letters_topic
from pipeline.codecs import RawRecord, encode
from schemas.records import DeadLetter


def raw_records(events: Sequence[EventT]) -> list[RawRecord]:
    return [
        RawRecord(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
        for e in events
    ]


async def send_dead_letters(dead: list[DeadLetter]) -> None:
    for letter in dead:
        await dead_letters_topic.send(
            key=f"{letter.source_topic}:{letter.partition}:{letter.offset}".encode(),
            value=encode(letter),
        )

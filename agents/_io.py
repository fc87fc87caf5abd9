"""What every agent does at its edge: send what it could not process to the dead letters."""

from __future__ import annotations

from pipeline.app import dead_letters_topic
from pipeline.codecs import encode
from schemas.records import DeadLetter


async def send_dead_letters(dead: list[DeadLetter]) -> None:
    for letter in dead:
        await dead_letters_topic.send(
            key=f"{letter.source_topic}:{letter.partition}:{letter.offset}".encode(),
            value=encode(letter),
        )

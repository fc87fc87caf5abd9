"""match_triggers: the rule topics → journey-signals.

Input: every topic a live flow's rules name (``user-events`` always; any topic of JSON records
keyed by or carrying a user id), as a bulk consumer of its own group (pipeline/batch_consumer.py),
re-subscribed when the rules' topics change.
Output: ``journey-signals`` (``JourneySignal`` kind "events"), one record per topic and user
partition of each batch read, holding the events some flow needs (pipeline/journeys/matching.py:
an entry rule they match, or members listening for them); the rest are dropped here.
A record of another topic that is no event (no user id, no name, not JSON) is dead-lettered with
the reason; on ``user-events`` ingest_events dead-letters those already. Events of erased users
(pipeline/erase.py) are dropped before routing out.
At least once: the batch's offsets are committed after Kafka acknowledged its signals.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog

from agents._io import send_dead_letters
from pipeline.app import app, clients, settings
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, dead_letter
from pipeline.erase_io import ErasedCheck
from pipeline.journeys.matching import route
from pipeline.journeys_io import FlowBook, FlowClock
from schemas.topics import JOURNEY_SIGNALS, USER_EVENTS

log = structlog.get_logger("herald.match_triggers")
book = FlowBook(settings, clients)
clock = FlowClock(settings, clients)
erased_check = ErasedCheck(clients)


async def match_batch(raws: list[RawRecord]) -> None:
    index, now = await book.refresh(), await clock.now()
    routed = route([(r.topic, r.key, r.value) for r in raws], index, now, JOURNEY_SIGNALS.partitions)
    erased = await erased_check.among(e["u"] for events in routed.signals.values() for e in events)
    if erased:  # an erased person enters no journey again (pipeline/erase.py)
        routed.signals = {k: kept for k, events in routed.signals.items()
                          if (kept := [e for e in events if e["u"] not in erased])}
    producer = await clients.producer()
    futures = [await producer.send(JOURNEY_SIGNALS.name, orjson.dumps({"kind": "events", "partition": p, "topic": topic,
                                                                       "events": events}),
                                   key=b"events", partition=p)
               for (topic, p), events in routed.signals.items()]
    for future in futures:
        await future
    await send_dead_letters([dead_letter(raws[i], "match_triggers", why)
                             for i, why in routed.bad if raws[i].topic != USER_EVENTS.name])


existing: set[str] = set()  # the topics Kafka has (a rule naming another is not read until it exists)
missing: set[str] = set()


def topics() -> list[str]:
    return sorted((book.index.topics & existing) | {USER_EVENTS.name})


async def look_around() -> None:
    """The rules, and which of their topics exist: subscribing to a topic that does not exist would hold the
    whole group's assignment, so one rule naming a wrong topic would stop every trigger."""
    await book.refresh()
    producer = await clients.producer()
    await producer.client.force_metadata_update()
    existing.clear()
    existing.update(producer.client.cluster.topics())
    absent = book.index.topics - existing
    if absent != missing:
        missing.clear()
        missing.update(absent)
        if absent:
            log.warning("rules name topics that do not exist; they are read once they do", topics=sorted(absent))


async def look_around_safely() -> bool:
    try:
        await look_around()
        return True
    except Exception:  # a Faust timer or task that raises is never run again: log, and look again later
        log.exception("match_triggers: reading the rules failed; looking again shortly")
        return False


@app.task
async def match_triggers() -> None:
    while not await look_around_safely():
        await asyncio.sleep(1.0)
    await run_forever(settings, topics, "match_triggers", match_batch)


@app.timer(5.0)
async def reload_rules() -> None:
    """Keep the rules (and so the topics read) current while no event arrives."""
    await look_around_safely()

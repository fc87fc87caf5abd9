"""match_triggers: the rule topics → journey-signals.

Input: every topic a live flow's rules name (``user-events`` always; any topic of JSON records
keyed by or carrying a user id), as a bulk consumer of its own group (pipeline/batch_consumer.py),
re-subscribed when the rules' topics change.
Output: ``journey-signals`` (``JourneySignal`` kind "events"), one record per topic and user
partition of each batch read, holding the events some flow needs (pipeline/journeys/matching.py:
an entry rule they match, or members listening for them); the rest are dropped here.
A record of another topic that is no event (no user id, no name, not JSON) is dead-lettered with
the reason; on ``user-events`` ingest_events dead-letters those already.
At least once: the batch's offsets are committed after Kafka acknowledged its signals.
"""

from __future__ import annotations

import orjson

from agents._io import send_dead_letters
from pipeline.app import app, clients, settings
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, dead_letter
from pipeline.journeys.matching import route
from pipeline.journeys_io import FlowBook, FlowClock
from schemas.topics import JOURNEY_SIGNALS, USER_EVENTS

book = FlowBook(settings, clients)
clock = FlowClock(settings, clients)


async def match_batch(raws: list[RawRecord]) -> None:
    index, now = await book.refresh(), await clock.now()
    routed = route([(r.topic, r.key, r.value) for r in raws], index, now, JOURNEY_SIGNALS.partitions)
    producer = await clients.producer()
    futures = [await producer.send(JOURNEY_SIGNALS.name, orjson.dumps({"kind": "events", "partition": p, "topic": topic,
                                                                       "events": events}),
                                   key=b"events", partition=p)
               for (topic, p), events in routed.signals.items()]
    for future in futures:
        await future
    await send_dead_letters([dead_letter(raws[i], "match_triggers", why)
                             for i, why in routed.bad if raws[i].topic != USER_EVENTS.name])


def topics() -> list[str]:
    return sorted(book.index.topics | {USER_EVENTS.name})


@app.task
async def match_triggers() -> None:
    await book.refresh()
    await run_forever(settings, topics, "match_triggers", match_batch)


@app.timer(5.0)
async def reload_rules() -> None:
    """Keep the rules (and so the topics read) current while no event arrives."""
    await book.refresh()

"""advance_journeys: journey-signals + delivery-events → message-requests (+ journey timers).

Input, co-partitioned by user: ``journey-signals`` (``JourneySignal``: events from
agents/match_triggers.py, due timers from this file's ``journey_timers``) and ``delivery-events``
(opens and clicks of journeys' own messages; everything else is skipped unread).
A segment-entry journey's users arrive as entry events of their own (``segment_entries``: who is in
the dynamic segment now and was not at the last look, per partition this worker owns).
Output: ``message-requests`` (``MessageBatch``, one per campaign, step "<node>@<entry tag>" and partition
of the sends decided within ``journey_flush_s``), then the gate applies preferences, caps, quiet
hours and dedup as for any campaign. Redis: ``flow:{flow}:progress`` counters, ``flow:{flow}:exit:{user}``
(a goal reached or the journey stopped: what was queued for that entry is dropped by the gate and
the senders), ``flow:{flow}:entries`` (entry limits).
State: tables/journey_state.py, each user's place in every flow; the timers' index is rebuilt from
it whenever the worker recovers its partitions, so waits survive restarts and cost nothing until due.
A record is acknowledged after what it decided is emitted (``Advancer.flush``): a crash replays it,
and the engine and message ids make the replay harmless. The decisions are pipeline/journeys/engine.py's.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from agents._io import send_dead_letters
from pipeline.app import app, audience, clients, journey_inputs_topic, settings
from pipeline.codecs import RawRecord, dead_letter, explain
from pipeline.journeys_io import Advancer
from pipeline.lanes import InOrderAcks
from pipeline.memory import AfterBursts, give_back
from schemas.topics import JOURNEY_SIGNALS
from tables.journey_state import journey_state

log = structlog.get_logger("herald.advance_journeys")
RETRIED = (RedisError, OSError, asyncio.TimeoutError)
FLUSH_AT_SENDS = 200  # flush at once when this many (campaign, step, partition) groups wait


def _owned(partition: int) -> bool:
    return any(tp.topic == JOURNEY_SIGNALS.name and tp.partition == partition for tp in app.consumer.assignment())


advancer = Advancer(settings, clients, audience, journey_state, owned=_owned)
handled = AfterBursts(threshold=32 * 2**20)  # bytes of records handled since memory was last given back


@app.agent(journey_inputs_topic)
async def advance_journeys(stream):
    acks = InOrderAcks()
    flusher = asyncio.create_task(_flush_when_due())
    try:
        async for event in stream.noack().events():
            ticket = acks.track(event.message.tp, event)
            await _handle(event)
            handled.add(len(event.value or b""))
            advancer.pending.acks.append(lambda ticket=ticket: acks.finish(ticket, True))
            if len(advancer.pending.sends) >= FLUSH_AT_SENDS:
                await advancer.flush()
    finally:
        flusher.cancel()


async def _handle(event) -> None:
    message, delay = event.message, 0.2
    while True:
        try:
            return await advancer.on_record(message.topic, message.partition, event.value)
        except (ValidationError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            reason = explain(exc) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
            raw = RawRecord(message.topic, message.partition, message.offset, event.key, event.value)
            return await send_dead_letters([dead_letter(raw, "advance_journeys", reason)])
        except RETRIED as exc:
            log.warning("advance_journeys: store unavailable, retrying the record", error=repr(exc), delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        except Exception as exc:  # a bug must not stop the stream for everybody: dead-letter the record
            log.exception("advance_journeys: record failed", partition=message.partition, offset=message.offset)
            raw = RawRecord(message.topic, message.partition, message.offset, event.key, event.value)
            return await send_dead_letters([dead_letter(raw, "advance_journeys", f"{type(exc).__name__}: {exc}")])


async def _flush_when_due() -> None:
    """``journey_flush_s`` after the first record that waits for a flush; asleep while nothing does."""
    while True:
        await advancer.waiting.wait()
        await asyncio.sleep(settings.journey_flush_s)
        advancer.waiting.clear()
        try:
            await advancer.flush()
        except Exception:  # flush retries stores itself; anything else must not stop the loop
            log.exception("advance_journeys: flush failed")


@app.timer(settings.journey_tick_s)
async def journey_timers() -> None:
    """Wake the users whose waits are due: one signal record per partition and second. (A Faust timer that
    raises is never called again: every error is logged here, and the next tick retries.)"""
    try:
        await advancer.wake_due()
    except Exception:
        log.exception("journey timers: waking failed; the next tick retries")


@app.timer(settings.journey_segment_s)
async def segment_entries() -> None:
    """Users who entered a segment-entry journey's dynamic segment enter the journey."""
    try:
        entered = await advancer.watch_segments()
    except Exception:
        log.exception("segment entries: the look failed; the next tick looks again")
        return
    if entered:
        log.info("users entered journeys by entering segments", users=entered)


@app.timer(10.0)
async def give_memory_back() -> None:
    """After a burst (a million users entering a journey), hand the heap the burst freed back to the system:
    the worker's resident size is then what it holds (the parked users' places), not the burst's peak."""
    if handled.due():
        give_back()


@journey_state.on_recover
async def _rebuild_timers() -> None:
    owned = [tp.partition for tp in app.consumer.assignment() if tp.topic == JOURNEY_SIGNALS.name]
    count = advancer.rebuild_timers(owned)
    log.info("journey timers rebuilt from the table", partitions=len(owned), waiting=count)

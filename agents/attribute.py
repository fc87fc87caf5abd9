"""attribute: messages sent leave touches; conversion events on user-events are attributed to them.

Inputs: ``delivery-events`` (group ``touches``: every "sent" leaves the user's last touch per campaign) and
``user-events`` (group ``attribute``: events some campaign's goals count as a conversion, ``purchase`` by default).
Output: ``delivery-events``: one ``converted`` event (with the revenue) per attributed conversion, keyed by the
user, published and acknowledged before the input is committed; the aggregate folds it once per message.
Side effects: Redis ``touch:{user}`` (pipeline/attribution_io.py). Decisions: pipeline/attribution.py
(last touch within the campaign's window, once per user and campaign).
"""

from __future__ import annotations

from agents._io import publish_keyed_events
from pipeline import attribution as decide
from pipeline.app import app, clients, settings
from pipeline.attribution_io import GoalBook, Touches
from pipeline.erase_io import ErasedCheck
from pipeline.batch_consumer import IDEMPOTENT_TIMEOUTS, run_forever
from pipeline.codecs import RawRecord
from schemas.records import UserEvent
from schemas.topics import DELIVERY_EVENTS, USER_EVENTS

touches = Touches(clients.redis(), ErasedCheck(clients))
goal_book = GoalBook(clients)


async def touch_batch(raws: list[RawRecord]) -> None:
    await touches.record_raw([r.value for r in raws])


async def attribute_batch(raws: list[RawRecord]) -> None:
    names = await goal_book.names()
    events = []
    for raw in raws:
        if decide.might_convert(raw.value, names):
            try:
                event = UserEvent.model_validate_json(raw.value)  # type: ignore[arg-type]
            except ValueError:
                continue  # ingest_events dead-letters it
            if event.name in names:
                events.append(event)
    if not events:
        return
    stored = await touches.read(e.user_id for e in events)
    goals = await goal_book.goals(decide.touched_campaigns(stored))
    conversions = decide.attribute_all(events, stored, goals)
    await publish_keyed_events(conversions)
    await touches.mark_converted(conversions)


@app.task
async def record_touches() -> None:
    await run_forever(settings, DELIVERY_EVENTS.name, "touches", touch_batch, IDEMPOTENT_TIMEOUTS)


@app.task
async def attribute_conversions() -> None:
    await run_forever(settings, USER_EVENTS.name, "attribute", attribute_batch)

"""control: campaign-control → the campaign's running state, and its held messages.

Input: ``campaign-control`` (JSON ``CampaignControl``, keyed by campaign id, so one
campaign's changes arrive in the order the API made them).
Output: held batches back to their topic and partition (resume); ``delivery-events``
"cancelled" events for held recipients (cancel); ``dead-letters`` for bad records.
Side effects: Redis ``campaign:{id}:status`` (and ``:launch``), ``campaign:{id}:held``.

    pause    → "paused": the gate and senders HOLD the campaign's batches (Redis list
               ``campaign:{id}:held``) instead of sending them; within their ≤ 200 ms cache.
    resume   → "active", then the held batches go back where they were going
               (``outbox.<channel>`` if the batch has a channel, else ``message-requests``),
               to the batch's partition.
    cancel   → "cancelled", held batches dropped, one "cancelled" event per held message.
    complete → "completed".

Draining is at-least-once and safe against concurrent holders: the list is read from
its head a slice at a time, each slice is sent (or its events emitted) and acknowledged,
and only then trimmed; holders push to the tail. A stage that decided to hold just before
it saw the new status pushes a little later, so the list is drained again after the
status caches have expired (``GRACE_S``).

Runs as a bulk consumer task (group ``<app_id>.control``); at-least-once, and a replayed record
repeats idempotent work (setting a status, draining an empty list). The decisions are
pipeline/control.py's; the store calls pipeline/control_io.py's.
"""

from __future__ import annotations

import structlog

from agents._io import send_dead_letters
from pipeline.app import app, clients, settings
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, decode_batch
from pipeline.control_io import Controller
from schemas.campaigns import CampaignControl
from schemas.topics import CAMPAIGN_CONTROL

log = structlog.get_logger("herald.control")
controller = Controller(clients)


async def control_batch(raws: list[RawRecord]) -> None:
    decoded = decode_batch(raws, CampaignControl, stage="control")
    for record in decoded.records:
        moved = await controller.apply(record)
        log.info("campaign control applied", campaign_id=record.campaign_id, action=record.action, held=moved)
    await send_dead_letters(decoded.dead)


@app.task
async def control_campaigns() -> None:
    await run_forever(settings, CAMPAIGN_CONTROL.name, "control", control_batch)

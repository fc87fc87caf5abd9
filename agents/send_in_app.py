"""send_in_app: outbox.in_app → provider → delivery-events (+ dead-letters).

Input: ``outbox.in_app`` (``MessageBatch``, one campaign and partition, many recipients).
Output, per batch: ONE ``DeliveryEventBatch`` (sent / bounced / failed, or held /
cancelled) to ``delivery-events`` on the batch's partition; one dead letter per
message that could not be sent (narrowed batch + reason).
Side effects: sends through the user's inbox in Redis (LPUSH + PUBLISH for the live stream), one pipeline per batch.
Redis: the channel's token bucket, the idempotency ledger, ``campaign:{id}:held``.

The loop is pipeline/sending.py's (shared by every channel); this file only wires it.
"""

from pipeline.app import app, clients, settings
from schemas.topics import OUTBOX
from pipeline.sending import faust_emitters, run_sender



@app.task
async def send_in_app() -> None:
    events, dead = faust_emitters()
    await run_sender(settings, "in_app", OUTBOX["in_app"].name, events, dead, await clients.postgres())

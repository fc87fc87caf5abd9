"""send_push: outbox.push → provider → delivery-events (+ dead-letters).

Input: ``outbox.push`` (``MessageBatch``, one campaign and partition, many recipients).
Output, per batch: ONE ``DeliveryEventBatch`` (sent / bounced / failed, or held /
cancelled) to ``delivery-events`` on the batch's partition; one dead letter per
message that could not be sent (narrowed batch + reason).
Side effects: sends through the FCM v1-shaped send API, one request per device token of the user's profile.
Redis: the channel's token bucket, the idempotency ledger, ``campaign:{id}:held``.

The loop is pipeline/sending.py's (shared by every channel); this file only wires it.
"""

from pipeline.app import app, clients, settings
from schemas.topics import OUTBOX
from pipeline.sending import faust_emitters, run_sender



@app.task
async def send_push() -> None:
    events, dead = faust_emitters()
    await run_sender(settings, "push", OUTBOX["push"].name, events, dead, await clients.postgres())

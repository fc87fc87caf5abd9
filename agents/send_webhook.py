"""send_webhook: outbox.webhook → provider → delivery-events (+ dead-letters).

Input: ``outbox.webhook`` (``MessageBatch``, one campaign and partition, many recipients).
Output, per batch: ONE ``DeliveryEventBatch`` (sent / bounced / failed, or held /
cancelled) to ``delivery-events`` on the batch's partition; one dead letter per
message that could not be sent (narrowed batch + reason).
Side effects: sends through a POST of the rendered JSON payload to the campaign's content.webhook.url.
Redis: the channel's token bucket, the idempotency ledger, ``campaign:{id}:held``.

The loop is pipeline/sending.py's (shared by every channel); this file only wires it.
"""

from pipeline.app import app, clients, settings
from schemas.topics import OUTBOX
from pipeline.sending import faust_emitters, run_sender



@app.task
async def send_webhook() -> None:
    events, dead = faust_emitters()
    await run_sender(settings, "webhook", OUTBOX["webhook"].name, events, dead, await clients.postgres())

"""send_email: outbox.email → provider → delivery-events (+ dead-letters).

Input: ``outbox.email`` (``MessageBatch``, one campaign and partition, many recipients).
Output, per batch: ONE ``DeliveryEventBatch`` (sent / bounced / failed, or held /
cancelled) to ``delivery-events`` on the batch's partition; one dead letter per
message that could not be sent (narrowed batch + reason).
Side effects: sends through SMTP (aiosmtplib, pooled sessions), or the SendGrid-shaped batch HTTP provider when
HERALD_EMAIL_PROVIDER=batch; each email carries List-Unsubscribe headers, tracked links
and an open pixel.
Redis: the channel's token bucket, the idempotency ledger, ``campaign:{id}:held``.

The loop is pipeline/sending.py's (shared by every channel); this file only wires it.
"""

from pipeline.app import app, clients, settings
from schemas.topics import OUTBOX
from pipeline.sending import faust_emitters, run_sender



@app.task
async def send_email() -> None:
    events, dead = faust_emitters()
    await run_sender(settings, "email", OUTBOX["email"].name, events, dead, await clients.postgres())

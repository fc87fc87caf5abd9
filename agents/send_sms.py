"""send_sms: outbox.sms → provider → delivery-events (+ dead-letters).

Input: ``outbox.sms`` (``MessageBatch``, one campaign and partition, many recipients).
Output, per batch: ONE ``DeliveryEventBatch`` (sent / bounced / failed, or held /
cancelled) to ``delivery-events`` on the batch's partition; one dead letter per
message that could not be sent (narrowed batch + reason).
Side effects: sends through the Twilio-shaped Messages API over kept-alive HTTP connections, concurrently.
Redis: the channel's token bucket and queue lag, the batch claims and idempotency ledger,
``campaign:{id}:held``.

The loop is pipeline/send/'s (shared by every channel: consumer.py runs sender.py's ``Sender``);
this file only wires it to the worker's shared clients and to Faust's producer (agents/_io.py).
At least once: a batch's offset is committed after its events and dead letters are acknowledged,
and a replay skips what the idempotency ledger says the provider already accepted.
"""

from agents._io import publish_dead_letters, publish_event_batch
from pipeline.app import app, clients, settings
from pipeline.send.consumer import run_sender
from schemas.topics import OUTBOX


@app.task
async def send_sms() -> None:
    await run_sender(settings, "sms", OUTBOX["sms"].name, publish_event_batch, publish_dead_letters,
                     await clients.postgres(), clients.redis())

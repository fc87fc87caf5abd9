"""send_sms: outbox.sms → the sms provider → delivery-events (+ dead-letters).

Sends through the Twilio-shaped Messages API over kept-alive HTTP connections, concurrently.
Input, output, Redis side effects and the at-least-once contract are every sender's, written
once in ``agents/_io.py`` (``run_channel_sender``).
"""

from agents._io import run_channel_sender
from pipeline.app import app


@app.task
async def send_sms() -> None:
    await run_channel_sender("sms")

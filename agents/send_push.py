"""send_push: outbox.push → the push provider → delivery-events (+ dead-letters).

Sends through the FCM v1-shaped send API, one request per device token of the user's profile.
Input, output, Redis side effects and the at-least-once contract are every sender's, written
once in ``agents/_io.py`` (``run_channel_sender``).
"""

from agents._io import run_channel_sender
from pipeline.app import app


@app.task
async def send_push() -> None:
    await run_channel_sender("push")

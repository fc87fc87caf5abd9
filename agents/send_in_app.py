"""send_in_app: outbox.in_app → the in_app provider → delivery-events (+ dead-letters).

Sends through the user's inbox in Redis (LPUSH + PUBLISH for the live stream), one pipeline per batch.
Input, output, Redis side effects and the at-least-once contract are every sender's, written
once in ``agents/_io.py`` (``run_channel_sender``).
"""

from agents._io import run_channel_sender
from pipeline.app import app


@app.task
async def send_in_app() -> None:
    await run_channel_sender("in_app")

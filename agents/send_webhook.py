"""send_webhook: outbox.webhook → the webhook provider → delivery-events (+ dead-letters).

Sends through a POST of the rendered JSON payload to the campaign's content.webhook.url.
Input, output, Redis side effects and the at-least-once contract are every sender's, written
once in ``agents/_io.py`` (``run_channel_sender``).
"""

from agents._io import run_channel_sender
from pipeline.app import app


@app.task
async def send_webhook() -> None:
    await run_channel_sender("webhook")

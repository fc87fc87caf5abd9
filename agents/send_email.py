"""send_email: outbox.email → the email provider → delivery-events (+ dead-letters).

Sends through SMTP (aiosmtplib, pooled sessions), or the SendGrid-shaped batch HTTP provider when
HERALD_EMAIL_PROVIDER=batch; each email carries List-Unsubscribe headers, tracked links and an
open pixel.
Input, output, Redis side effects and the at-least-once contract are every sender's, written
once in ``agents/_io.py`` (``run_channel_sender``).
"""

from agents._io import run_channel_sender
from pipeline.app import app


@app.task
async def send_email() -> None:
    await run_channel_sender("email")

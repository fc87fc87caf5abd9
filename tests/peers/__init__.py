"""Local protocol peers of Herald's providers, for tests, benchmarks and ``make run``.

    SmtpPeer      a real SMTP server (aiosmtpd) collecting messages
    TwilioPeer    Twilio Messages API shape (SMS)
    FcmPeer       FCM HTTP v1 send shape (push)
    WebhookPeer   any JSON POST receiver
    SendGridPeer  SendGrid v3 mail/send shape (batch email, up to 1,000 personalizations)

Each starts in-process on its own event-loop thread (``start()``; an ephemeral
port unless one is given), records what it receives, and can be told to fail
(``fail_next``, ``reject``/``unregister``, ``delay_s``). ``peer_settings``
points a Settings copy at running peers. ``python -m tests.peers`` runs all of
them on the ports of the settings, for ``make run`` and benchmarks.
"""

from __future__ import annotations

from config import Settings
from tests.peers.fcm import FcmPeer
from tests.peers.http import HttpPeer, Request, Response
from tests.peers.loop import LoopThread
from tests.peers.sendgrid import SendGridPeer
from tests.peers.smtp import Received, SmtpPeer
from tests.peers.twilio import TwilioPeer
from tests.peers.webhook import WebhookPeer


def peer_settings(settings: Settings, smtp: SmtpPeer | None = None, sms: TwilioPeer | None = None,
                  push: FcmPeer | None = None, email_batch: SendGridPeer | None = None) -> Settings:
    """A copy of ``settings`` whose providers are the given running peers."""
    update: dict = {}
    if smtp is not None:
        update |= {"smtp_host": smtp.host, "smtp_port": smtp.port}
    if sms is not None:
        update |= {"sms_url": sms.url, "sms_account_sid": sms.account_sid, "sms_auth_token": sms.auth_token}
    if push is not None:
        update |= {"push_url": push.url, "push_token": push.token}
    if email_batch is not None:
        update |= {"email_batch_url": email_batch.url, "email_batch_key": email_batch.api_key}
    return settings.model_copy(update=update)


__all__ = ["FcmPeer", "HttpPeer", "LoopThread", "Received", "Request", "Response", "SendGridPeer", "SmtpPeer",
           "TwilioPeer", "WebhookPeer", "peer_settings"]

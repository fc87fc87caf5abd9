"""Provider adapters, one module per channel, all behind ``base.Channel``.

    email_smtp   SmtpChannel     SMTP with pooled sessions (MIME bytes built by ``mime``)
    email_batch  SendGridBatch   HTTP batch email shaped like SendGrid v3 mail/send (1,000 per request)
    sms          TwilioSms       Twilio Messages API shape
    push         FcmPush         FCM HTTP v1 send shape
    in_app       RedisInbox      a capped per-user list in Redis
    webhook      WebhookChannel  a JSON POST to a URL

``open_channel`` builds the adapter for a channel from settings and closes it
on exit; a long-lived sender opens one per process and keeps it. Email goes
over SMTP unless ``email_provider`` (HERALD_EMAIL_PROVIDER) is "batch".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from config import Settings
from pipeline.channels.base import PERMANENT, SENT, TRANSIENT, Channel, Message, SendResult
from pipeline.channels.email_batch import SendGridBatch
from pipeline.channels.email_smtp import SmtpChannel
from pipeline.channels.in_app import RedisInbox
from pipeline.channels.push import FcmPush
from pipeline.channels.sms import TwilioSms
from pipeline.channels.webhook import WebhookChannel


def email_provider(settings: Settings) -> str:
    """"smtp" or "batch" (the SendGrid-shaped HTTP provider)."""
    provider = str(getattr(settings, "email_provider", "smtp") or "smtp").lower()
    if provider not in ("smtp", "batch"):
        raise ValueError(f"HERALD_EMAIL_PROVIDER is {provider!r}; expected smtp or batch")
    return provider


def make_channel(channel: str, settings: Settings, redis: Redis | None = None, **options) -> Channel:
    if channel == "email":
        if email_provider(settings) == "batch":
            return SendGridBatch(settings, **options)
        return SmtpChannel(settings, **options)
    if channel == "sms":
        return TwilioSms(settings, **options)
    if channel == "push":
        return FcmPush(settings, **options)
    if channel == "webhook":
        return WebhookChannel(settings, **options)
    if channel == "in_app":
        if redis is None:
            raise ValueError("the in-app channel needs a Redis client")
        return RedisInbox(redis, **options)
    raise ValueError(f"unknown channel {channel!r}")


@asynccontextmanager
async def open_channel(
    channel: str, settings: Settings, redis: Redis | None = None, **options
) -> AsyncIterator[Channel]:
    adapter = make_channel(channel, settings, redis, **options)
    try:
        yield adapter
    finally:
        await adapter.aclose()


__all__ = [
    "PERMANENT", "SENT", "TRANSIENT", "Channel", "FcmPush", "Message", "RedisInbox", "SendGridBatch", "SendResult",
    "SmtpChannel",
    "TwilioSms", "WebhookChannel", "email_provider", "make_channel", "open_channel",
]

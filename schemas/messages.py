"""Records of the delivery pipeline: message batches between stages, and delivery events.

From the explode stage on, work travels in batches: one Kafka record carries many
recipients of ONE partition (the partition of each recipient's ``user-profiles``
key), so per-record costs of Faust and Kafka are paid once per batch, and a
stage's per-user state lives in the partition that owns the user.

    campaign-launches ─► [explode] ─► message-requests   (MessageBatch, channel None)
    message-requests  ─► [gate]    ─► outbox.<channel>   (MessageBatch, one channel)
    outbox.<channel>  ─► [send_*]  ─► delivery-events    (DeliveryEventBatch)

A message is identified by ``message_id(campaign, user, channel, step)``: the
same message gets the same id on every replay, which is what dedup and the
senders' idempotency records key on.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from schemas.encoding import BIGINT_MAX

MESSAGE_NAMESPACE = uuid.UUID("2b0c6c1e-5d1a-4b8e-8f7e-3c9a1d5e7f20")

Channel = Literal["email", "sms", "push", "in_app", "webhook"]
CHANNELS: tuple[str, ...] = ("email", "sms", "push", "in_app", "webhook")

DeliveryStatus = Literal[
    "queued",      # released by the gate to a channel's outbox
    "sent",        # the provider accepted it
    "delivered",   # the provider (or its callback) confirmed delivery
    "bounced",     # hard bounce / invalid address: the recipient goes on the suppression list
    "failed",      # permanent failure, or retries exhausted (then also dead-lettered)
    "suppressed",  # the gate refused it; ``reason`` says why
    "deferred",    # held by the gate until quiet hours end
    "held",        # held because the campaign is paused
    "cancelled",   # dropped because the campaign was cancelled
    "expired",     # dropped because the campaign reached its end_time before it was sent
    "opened",      # the email's open pixel was fetched (api/tracking.py)
    "clicked",     # a tracked link was followed (api/tracking.py; ``reason`` holds the URL)
    "converted",   # a goal event of the campaign followed the message (pipeline/attribution.py): carries revenue
    "unsubscribed",  # the recipient used the message's unsubscribe link (api/preferences.py): counted per campaign
    "complained",  # the recipient reported it as spam (a provider's callback): they go on the suppression list
]


def message_id(campaign_id: int, user_id: int, channel: str, step: str = "send") -> uuid.UUID:
    """The deterministic id of one message: the same on every replay, worker and restart."""
    return uuid.uuid5(MESSAGE_NAMESPACE, f"{campaign_id}:{user_id}:{channel}:{step}")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Recipient(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: int = Field(gt=0, le=BIGINT_MAX)  # a PostgreSQL bigint, as in the profiles (schemas/records.py)
    variant: str | None = None  # A/B variant id, None without a test
    language: str = "en"
    # Set by the gate when a quiet-hours deferral or a pause released the message late.
    not_before: datetime | None = None


class MessageBatch(BaseModel):
    """Many recipients of one campaign step, all in the Kafka partition ``partition``."""

    batch_id: str  # deterministic: "<launch_id>:<chunk>:<partition>" from explode; stages append ":<channel>"
    campaign_id: int = Field(gt=0, le=BIGINT_MAX)
    launch_id: uuid.UUID | None = None
    step: str = "send"
    channel: Channel | None = None  # None on message-requests (every channel of the campaign)
    partition: int = Field(ge=0)
    category: str = "promotional"
    transactional: bool = False  # transactional messages bypass frequency caps
    recipients: list[Recipient]
    launched_at: datetime = Field(default_factory=_now)  # for launch-to-provider latency
    attempt: int = 0  # redelivery count (dlq-replay, retries across restarts)


class DeliveryEvent(BaseModel):
    message_id: uuid.UUID
    campaign_id: int
    user_id: int
    channel: Channel
    step: str = "send"
    variant: str | None = None
    status: DeliveryStatus
    reason: str | None = None  # suppression reason, provider error, ...
    provider_id: str | None = None
    cost: float = 0.0  # what this event spent against the budget (sent messages only)
    revenue: float = 0.0  # what a conversion brought (status converted: pipeline/attribution.py)
    event_id: str | None = None  # the provider's id of this event (its callbacks repeat; pipeline/callbacks.py)
    machine: bool = False  # an open that looks automated (pipeline/engagement.py): counted apart from people's
    at: datetime = Field(default_factory=_now)


class DeliveryEventBatch(BaseModel):
    events: list[DeliveryEvent]


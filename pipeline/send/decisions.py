"""The send stage's decisions: plain functions over plain values, no I/O.

What the sender (``pipeline/send/sender.py``) asks and acts on:

- ``RetryPolicy``: whether to try a message again, and how long to wait first;
- ``channel_rate`` and ``bucket_take``: the channel's rate, and the token bucket's arithmetic
  (the Python twin of the script Redis runs, ``pipeline/send/pacing.py``);
- ``plan_content`` and ``SendPlan``: what one campaign sends on one channel;
- ``message_address``: where one message goes;
- ``combine``, ``outcome_event``, ``status_event``: the event a message's outcome becomes;
- ``narrowed``: the batch a dead letter carries.

Standard library, settings, records and other pure modules only (tests/unit/test_layers.py
checks it); unit tested in tests/unit/pipeline/send/test_decisions.py.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from config import Settings
from pipeline.campaigns import inline_parts
from pipeline.channels.base import PERMANENT, SENT, TRANSIENT, SendResult
from pipeline.channels.mime import _BARE_ADDRESS
from pipeline.content.model import PART_KINDS, CompiledTemplate, TemplateContent
from schemas.messages import DeliveryEvent, MessageBatch, Recipient, message_id

# ---------------------------------------------------------------- rate and retries


def channel_rate(settings: Settings, channel: str) -> float:
    """Messages per second for ``channel`` across all workers (HERALD_RATE_EMAIL, HERALD_RATE_SMS, ...)."""
    rates = {"email": settings.rate_email, "sms": settings.rate_sms, "push": settings.rate_push,
             "in_app": settings.rate_in_app, "webhook": settings.rate_webhook}
    return float(rates[channel])


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in each wait.

    After the ``n``-th failed attempt the wait is drawn from [c/2, c] with
    c = min(cap_s, base_s * 2**(n-1)) ("equal jitter": never a zero wait that
    hammers a struggling provider, never synchronized across workers). A
    Retry-After from the provider is honoured, up to ``max_retry_after_s``
    so one batch never holds its slot for long. Worst case with the defaults:
    0.5 + 1 + 2 + 4 + 8 = 15.5 s over 6 attempts.
    """

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 10.0
    max_retry_after_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(max_attempts=settings.send_max_attempts, base_s=settings.send_backoff_base_s,
                   cap_s=settings.send_backoff_cap_s, max_retry_after_s=settings.send_max_retry_after_s)

    def should_retry(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts

    def delay(self, attempts_made: int, retry_after_s: float | None = None,
              rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** max(0, attempts_made - 1))
        wait = ceiling / 2 + rand() * ceiling / 2
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_retry_after_s))
        return wait


def bucket_take(tokens: float, last: float, now: float, rate: float, burst: float, wanted: int
                ) -> tuple[int, float, float]:
    """Take up to ``wanted`` tokens: (granted, seconds until the rest could be granted, tokens left).

    The bucket refills at ``rate`` per second up to ``burst``. A partial grant is
    allowed (send what you may now); the wait is for what is still missing, at most
    one burst. This is the Python twin of ``TOKEN_BUCKET`` (the script Redis runs,
    pipeline/send/pacing.py), kept for the unit tests and the docs.
    """
    if now > last:
        tokens = min(burst, tokens + (now - last) * rate)
    granted = min(wanted, int(math.floor(tokens)))
    tokens -= granted
    wait = 0.0 if granted >= wanted else (min(wanted - granted, burst) - tokens) / rate
    return granted, max(0.0, wait), tokens


# ---------------------------------------------------------------- what a campaign sends


@dataclass
class SendPlan:
    """What one campaign sends on one channel: compiled content, its variables, its target and cost."""

    campaign_id: int
    channel: str
    template: CompiledTemplate
    variables: dict[str, Any]
    unit_cost: float
    url: str | None = None  # the webhook channel's target
    journey_id: int | None = None  # a journey's send node: users who left the journey get nothing more


def plan_content(channel: str, entry: Mapping[str, Any], template: Mapping[str, Any] | None) -> TemplateContent:
    """The content to render: the named template, its parts overridden by the campaign's inline parts."""
    inline = {k: v for k, v in inline_parts(channel, entry).items() if k in PART_KINDS[channel]}
    if channel == "webhook" and isinstance(entry.get("payload"), Mapping):
        inline["payload"] = orjson.dumps(entry["payload"]).decode()
    if template is None:
        return TemplateContent(channel=channel, parts=inline)
    content = TemplateContent.from_record(template)
    return TemplateContent(channel=channel, parts={**content.parts, **inline},
                           default_language=content.default_language,
                           translations=content.translations, variants=content.variants)


# ---------------------------------------------------------------- addresses and outcomes


def message_address(channel: str, profile: Mapping[str, Any] | None, user_id: int, url: str | None = None
                    ) -> list[str]:
    """Where one message goes: [] if the user cannot be reached on ``channel`` (push: every device token)."""
    if channel == "in_app":
        return [str(user_id)]
    if channel == "webhook":
        return [url] if url else []
    if profile is None:
        return []
    if channel == "email":
        email = (profile.get("email") or "").strip()
        return [email] if _BARE_ADDRESS.fullmatch(email) else []  # nothing else is deliverable
    if channel == "sms":
        phone = (profile.get("phone") or "").strip()
        return [phone] if phone else []
    if channel == "push":
        return [t for t in dict.fromkeys(profile.get("push_tokens") or []) if isinstance(t, str) and t]
    return []


def combine(results: Sequence[SendResult]) -> SendResult:
    """One user's outcome over several sends (push to each device): any success wins, then transient."""
    for wanted in (SENT, TRANSIENT):
        for result in results:
            if result.outcome == wanted:
                return result
    return SendResult.permanent("; ".join(dict.fromkeys(r.reason for r in results)),
                                code=results[0].code if results else None,
                                recipient_problem=bool(results) and all(r.recipient_problem for r in results))


def outcome_event(batch: MessageBatch, recipient: Recipient, channel: str, result: SendResult, attempts: int,
                  unit_cost: float) -> DeliveryEvent:
    """The event for a message's final outcome: sent, bounced (the recipient's fault) or failed."""
    base = {"message_id": message_id(batch.campaign_id, recipient.user_id, channel, batch.step),
            "campaign_id": batch.campaign_id, "user_id": recipient.user_id, "channel": channel,
            "step": batch.step, "variant": recipient.variant}
    if result.outcome == SENT:
        return DeliveryEvent(**base, status="sent", provider_id=result.provider_id, cost=unit_cost)
    if result.outcome == PERMANENT:
        status = "bounced" if result.recipient_problem else "failed"
        return DeliveryEvent(**base, status=status, reason=result.reason or result.code)
    return DeliveryEvent(**base, status="failed",
                         reason=f"gave up after {attempts} attempt(s): {result.reason}")


def status_event(batch: MessageBatch, recipient: Recipient, channel: str, status: str, reason: str | None
                 ) -> DeliveryEvent:
    """The event of a message that was not sent: held, cancelled, or failed before any provider call."""
    return DeliveryEvent(message_id=message_id(batch.campaign_id, recipient.user_id, channel, batch.step),
                         campaign_id=batch.campaign_id, user_id=recipient.user_id, channel=channel,
                         step=batch.step, variant=recipient.variant, status=status, reason=reason)


def narrowed(batch: MessageBatch, recipient: Recipient) -> MessageBatch:
    """The batch reduced to one recipient: what a dead letter carries so a replay sends only that message."""
    return batch.model_copy(update={"recipients": [recipient], "batch_id": f"{batch.batch_id}:u{recipient.user_id}"})

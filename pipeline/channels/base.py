"""The one interface every provider adapter speaks: a Message in, a SendResult out.

Senders (the API's test-send, the pipeline's send_<channel> agents) never
branch on a provider: they hold a ``Channel``, call ``send`` (or ``send_many``
for a batch, which runs sends concurrently over the adapter's kept-alive
connections) and act on the outcome:

    sent        the provider accepted the message (``provider_id`` is its id for it)
    transient   try again later (timeouts, 5xx, 429; ``retry_after_s`` when the provider said)
    permanent   never retry; ``recipient_problem`` says whether the address itself is bad
                (hard bounce, invalid number, unregistered token) and belongs on the
                suppression list, as opposed to, say, our own credentials being refused
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

SENT = "sent"
TRANSIENT = "transient"
PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered message for one recipient on one channel."""

    channel: str
    to: str  # email address, E.164 number, device token, user id (in-app) or URL (webhook)
    parts: Mapping[str, str]  # rendered parts (pipeline.templates.Rendered.parts)
    message_id: str  # Herald's id: deterministic per (campaign, user, channel, step) in the pipeline
    campaign_id: int | None = None
    user_id: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # extra email/webhook headers
    data: Mapping[str, str] = field(default_factory=dict)  # extra push data / in-app fields
    raw: bytes | None = None  # pre-built payload (email: the whole MIME message), built once
    # What the provider echoes in its delivery callbacks to name the message (pipeline.callbacks.callback_args).
    callback: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: str  # SENT, TRANSIENT or PERMANENT
    provider_id: str | None = None
    reason: str = ""
    code: str | None = None  # the provider's own error code ("21211", "UNREGISTERED", "550")
    retry_after_s: float | None = None
    recipient_problem: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == SENT

    @classmethod
    def sent(cls, provider_id: str | None) -> SendResult:
        return cls(SENT, provider_id=provider_id)

    @classmethod
    def transient(cls, reason: str, code: str | None = None, retry_after_s: float | None = None) -> SendResult:
        return cls(TRANSIENT, reason=reason, code=code, retry_after_s=retry_after_s)

    @classmethod
    def permanent(cls, reason: str, code: str | None = None, recipient_problem: bool = False) -> SendResult:
        return cls(PERMANENT, reason=reason, code=code, recipient_problem=recipient_problem)


OnResult = Callable[[int, SendResult], None]


@runtime_checkable
class Channel(Protocol):
    """A provider adapter. Open once per process, send many, close at the end."""

    name: str

    async def send(self, message: Message) -> SendResult: ...

    async def send_many(self, messages: Sequence[Message], on_result: OnResult | None = None
                        ) -> list[SendResult]:
        """Send every message; ``on_result(index, result)`` is called as each answer arrives, so
        the caller can record acknowledgements before the slowest message of the lot returns."""
        ...

    async def aclose(self) -> None: ...


class ConcurrentSends:
    """``send_many`` as concurrent ``send`` calls, at most ``concurrency`` in flight (mixin)."""

    concurrency: int = 64

    async def send(self, message: Message) -> SendResult:  # pragma: no cover - provided by the adapter
        raise NotImplementedError

    async def send_many(self, messages: Sequence[Message], on_result: OnResult | None = None
                        ) -> list[SendResult]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(index: int, message: Message) -> SendResult:
            async with gate:
                result = await self.send(message)
            if on_result is not None:
                on_result(index, result)
            return result

        return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(messages))))


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

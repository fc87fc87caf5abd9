"""Email through an HTTP batch provider shaped like SendGrid's v3 ``mail/send``.

    POST {email_batch_url}   Authorization: Bearer {email_batch_key}
    {"from": {"email": ..., "name": ...},
     "content": [{"type": "text/plain", "value": "-text-"}, {"type": "text/html", "value": "-html-"}],
     "personalizations": [              (1..1000 per request)
        {"to": [{"email": ...}], "subject": ...,
         "headers": {"List-Unsubscribe": ..., ...},
         "substitutions": {"-text-": <this recipient's text>, "-html-": <this recipient's html>},
         "custom_args": {"message_id": ..., "herald_cid": ..., ...}}, ...]}   (pipeline.callbacks)
    -> 202, X-Message-Id: <batch id>      -> 400 {"errors": [{"message", "field"}]}

Each message is rendered for its recipient (personal links, tracking), so the
shared ``content`` is a pair of placeholders that every personalization fills
with its own text: one request carries up to 1,000 fully personal emails, where
SMTP needs a transaction (three round trips) per email.

The provider answers for the whole request: 2xx sends every message of it
(``provider_id`` is ``<X-Message-Id>.<index>``), 429/5xx/no answer leaves every
one of them to retry, another 4xx fails them all (not the recipients' fault).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from email.utils import parseaddr
from typing import Any


import orjson

from config import Settings
from pipeline.channels.base import Message, OnResult, SendResult
from pipeline.channels.http import HTTP_ERRORS, http_client, status_failure, transport_failure
from pipeline.pii import redact  # reasons are stored and logged: no address in them

MAX_PERSONALIZATIONS = 1000
TEXT, HTML = "-herald-text-", "-herald-html-"


def _address(value: str) -> dict[str, str]:
    name, address = parseaddr(value)
    return {"email": address, "name": name} if name else {"email": address}


def personalization(message: Message) -> dict[str, Any]:
    parts = message.parts
    return {
        "to": [{"email": message.to}],
        "subject": parts.get("subject", ""),
        "headers": dict(message.headers),
        "substitutions": {TEXT: parts.get("text", ""), HTML: parts.get("html") or parts.get("text", "")},
        "custom_args": {"message_id": message.message_id, **message.callback},  # echoed by the event webhook
    }


def mail_send_body(sender: str, messages: Sequence[Message]) -> bytes:
    """The JSON body of one ``mail/send`` request for up to 1,000 rendered messages."""
    return orjson.dumps({
        "from": _address(sender),
        "content": [{"type": "text/plain", "value": TEXT}, {"type": "text/html", "value": HTML}],
        "personalizations": [personalization(m) for m in messages],
    })


class SendGridBatch:
    name = "email"

    def __init__(self, settings: Settings, connections: int = 4, sender: str | None = None) -> None:
        self.url = settings.email_batch_url
        self.sender = sender or settings.smtp_from
        self.concurrency = connections
        self.client = http_client(settings, connections, headers={
            "Authorization": f"Bearer {settings.email_batch_key}", "Content-Type": "application/json"})

    async def _request(self, messages: Sequence[Message]) -> list[SendResult]:
        try:
            response = await self.client.post(self.url, content=mail_send_body(self.sender, messages))
        except HTTP_ERRORS as exc:
            return [transport_failure(exc, self.url)] * len(messages)
        if response.is_success:
            batch = response.headers.get("x-message-id") or "batch"
            return [SendResult.sent(f"{batch}.{i}") for i in range(len(messages))]
        try:
            errors = response.json().get("errors") or []
            text = "; ".join(f"{e.get('field') or ''}: {e.get('message')}".strip(": ") for e in errors)
        except (ValueError, AttributeError):
            text = response.text[:200]
        result = status_failure(response, redact(f"{response.status_code} {text or response.reason_phrase}".strip()),
                                code=str(response.status_code))
        return [result] * len(messages)

    async def send_many(self, messages: Sequence[Message], on_result: OnResult | None = None
                        ) -> list[SendResult]:
        starts = range(0, len(messages), MAX_PERSONALIZATIONS)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(start: int) -> list[SendResult]:
            async with gate:
                answers = await self._request(messages[start:start + MAX_PERSONALIZATIONS])
            if on_result is not None:
                for i, answer in enumerate(answers, start):
                    on_result(i, answer)
            return answers

        results: list[SendResult] = []
        for part in await asyncio.gather(*(one(s) for s in starts)):
            results += part
        return results

    async def send(self, message: Message) -> SendResult:
        return (await self._request([message]))[0]

    async def aclose(self) -> None:
        await self.client.aclose()

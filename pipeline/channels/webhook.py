"""The webhook channel: the rendered JSON payload POSTed to a URL.

The body is the payload exactly as rendered (it was validated as JSON when
rendered), with ``X-Herald-Message-Id`` for the receiver's dedup and, when a
secret is given, ``X-Herald-Signature: sha256=<hex HMAC of the body>``. A
2xx is sent; 408/425/429/5xx and no answer are transient; other 4xx permanent.
"""

from __future__ import annotations

import hashlib
import hmac

from config import Settings
from pipeline.channels.base import ConcurrentSends, Message, SendResult
from pipeline.channels.http import HTTP_ERRORS, http_client, status_failure, transport_failure


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel(ConcurrentSends):
    name = "webhook"

    def __init__(self, settings: Settings, secret: str | None = None, connections: int = 8) -> None:
        self.secret = secret
        self.concurrency = connections
        self.client = http_client(settings, connections, headers={"User-Agent": "Herald-Webhook/1"})

    async def send(self, message: Message) -> SendResult:
        body = message.raw or message.parts.get("payload", "").encode()
        headers = {"Content-Type": "application/json", "X-Herald-Message-Id": message.message_id, **message.headers}
        if self.secret:
            headers["X-Herald-Signature"] = signature(self.secret, body)
        try:
            response = await self.client.post(message.to, content=body, headers=headers)
        except HTTP_ERRORS as exc:
            return transport_failure(exc, message.to)
        if response.is_success:
            return SendResult.sent(response.headers.get("x-request-id") or message.message_id)
        reason = f"{response.status_code} {response.reason_phrase}: {response.text[:200]}".strip()
        return status_failure(response, reason, code=str(response.status_code))

    async def aclose(self) -> None:
        await self.client.aclose()

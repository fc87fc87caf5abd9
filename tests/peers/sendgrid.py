"""A peer shaped like SendGrid's v3 ``POST /v3/mail/send`` (the batch email provider of issue 6).

Checks the bearer key and the body's shape (``personalizations`` 1..1000, each
with ``to``; ``from.email``; a subject; ``content`` or per-personalization
data) and answers 202 with an ``X-Message-Id`` header and no body, or 400 with
SendGrid's ``{"errors": [{"message", "field", "help"}]}``. ``delivered``
counts recipients (every ``to`` of every accepted personalization). Given ``events_url``, it posts
signed Event Webhook batches about every accepted message (tests/peers/callbacks.py).
"""

from __future__ import annotations

import secrets

from tests.peers.callbacks import CallbackPoster, Outcomes, fate, sendgrid_item, sendgrid_requests, sendgrid_signer
from tests.peers.http import HttpPeer, Request, Response

MAX_PERSONALIZATIONS = 1000


def _error(field: str, message: str) -> Response:
    return Response(400, {"errors": [{"message": message, "field": field, "help": None}]})


class SendGridPeer(HttpPeer):
    path = "/v3/mail/send"

    def __init__(self, api_key: str = "herald-local", events_url: str | None = None,
                 outcomes: Outcomes | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self.delivered = 0
        self.outcomes = outcomes or Outcomes()
        # The Event Webhook (tests/peers/callbacks.py): None sends no callbacks.
        self.events = CallbackPoster(sendgrid_requests(events_url, sendgrid_signer())) if events_url else None

    async def _closing(self) -> None:
        if self.events is not None:
            await self.events.close()

    def reset(self) -> None:
        super().reset()
        self.delivered = 0

    def handle(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Response(401, {"errors": [{"message": "The provided authorization grant is invalid, expired, "
                                                         "or revoked", "field": None, "help": None}]})
        if request.method != "POST" or request.path != self.path:
            return Response(404, {"errors": [{"message": "Not found", "field": None, "help": None}]})
        try:
            body = request.json()
        except Exception:  # noqa: BLE001 - any malformed body
            return _error("(root)", "Bad Request")
        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not 1 <= len(personalizations) <= MAX_PERSONALIZATIONS:
            return _error("personalizations", f"between 1 and {MAX_PERSONALIZATIONS} personalizations are required")
        if not isinstance(body.get("from"), dict) or not body["from"].get("email"):
            return _error("from.email", "The from email does not contain a valid address.")
        recipients = 0
        for i, personalization in enumerate(personalizations):
            to = personalization.get("to") if isinstance(personalization, dict) else None
            valid = isinstance(to, list) and to and all(isinstance(t, dict) and "@" in str(t.get("email")) for t in to)
            if not valid:
                return _error(f"personalizations.{i}.to", "Does not contain a valid address.")
            if not (body.get("subject") or personalization.get("subject") or body.get("template_id")):
                return _error("subject", "The subject is required.")
            recipients += len(to)
        if not body.get("content") and not body.get("template_id"):
            return _error("content", "Unless a valid template_id is provided, the content parameter is required.")
        with self._changed:
            self.delivered += recipients
        batch_id = secrets.token_urlsafe(16)
        if self.events is not None:
            for i, personalization in enumerate(personalizations):
                mid = str((personalization.get("custom_args") or {}).get("message_id") or f"{batch_id}.{i}")
                for delay, kind in fate(mid, personalization["to"][0]["email"], self.outcomes):
                    self.events.schedule(delay, sendgrid_item(kind, personalization, batch_id, i))
        return Response(202, b"", {"X-Message-Id": batch_id})

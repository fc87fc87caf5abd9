"""Provider callbacks: checking that a provider sent them, and reading them as Herald's delivery events. Pure.

Two shapes, each verified the way its provider signs it:

    SendGrid Event Webhook   POST, a JSON array of events; ECDSA P-256 / SHA-256 over
                             ``<X-Twilio-Email-Event-Webhook-Timestamp><raw body>``, the signature in
                             ``X-Twilio-Email-Event-Webhook-Signature`` (base64 DER), checked with the public
                             key SendGrid shows (base64 DER SubjectPublicKeyInfo); the timestamp must be
                             within ``tolerance_s`` of now, so a captured request cannot be replayed later.
    Twilio status callback   POST, form-encoded (MessageSid, MessageStatus, ErrorCode, ...) to the
                             ``StatusCallback`` URL Herald gave with the message; ``X-Twilio-Signature`` is
                             base64 HMAC-SHA1, keyed by the auth token, of the full URL followed by every
                             POST parameter's name and value, sorted by name.

Which message an event is about: Herald hands each provider the message's identity with the message
(``callback_args``: SendGrid echoes ``custom_args`` as top-level keys of each event; the Twilio sender
puts them in the StatusCallback's query string, which the signature covers), so a callback is mapped
without a lookup. Events for messages Herald did not send through the pipeline (a test send, another
system on the same account) carry no such arguments and are skipped.

Each event keeps the provider's own event id (``event_id``): providers retry and send duplicates, and
counting downstream is once per (message, status) and, for totals, once per event id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from pipeline.engagement import machine_open
from schemas.encoding import BIGINT_MAX
from schemas.messages import CHANNELS, DeliveryEvent

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE = "X-Twilio-Signature"
TOLERANCE_S = 300.0
MAX_EVENTS = 1000  # SendGrid posts batches of up to ~1,000 events (or 768 KB)

# The keys Herald gives a provider to echo back (SendGrid's custom_args; the StatusCallback's query).
ARG_MESSAGE, ARG_CAMPAIGN, ARG_USER, ARG_CHANNEL, ARG_VARIANT, ARG_STEP = ("herald_mid", "herald_cid", "herald_uid",
                                                                             "herald_ch", "herald_var", "herald_step")


class CallbackRefused(ValueError):
    """The request is not provably the provider's (missing, stale or wrong signature): answer 401/403."""


# ---------------------------------------------------------------- identity handed to providers


@dataclass(frozen=True, slots=True)
class MessageRef:
    message_id: uuid.UUID
    campaign_id: int
    user_id: int
    channel: str
    variant: str | None
    step: str


def callback_args(message_id: str, campaign_id: int | None, user_id: int | None, channel: str,
                  variant: str | None = None, step: str = "send") -> dict[str, str]:
    """What a sender gives the provider to echo in its callbacks (strings only: SendGrid's rule)."""
    if campaign_id is None or user_id is None:
        return {}  # not a pipeline message (a test send): its callbacks are not counted
    args = {ARG_MESSAGE: message_id, ARG_CAMPAIGN: str(campaign_id), ARG_USER: str(user_id), ARG_CHANNEL: channel,
            ARG_STEP: step}
    if variant:
        args[ARG_VARIANT] = variant
    return args


def _bigint(value: Any) -> int | None:
    try:
        number = int(str(value), 10)
    except (TypeError, ValueError):
        return None
    return number if 0 < number <= BIGINT_MAX else None


def message_ref(args: Mapping[str, Any]) -> MessageRef | None:
    """The message a callback's echoed arguments name, or None if they are missing or malformed."""
    try:
        message_id = uuid.UUID(str(args.get(ARG_MESSAGE, "")))
    except ValueError:
        return None
    campaign_id, user_id = _bigint(args.get(ARG_CAMPAIGN)), _bigint(args.get(ARG_USER))
    channel = str(args.get(ARG_CHANNEL, ""))
    if campaign_id is None or user_id is None or channel not in CHANNELS:
        return None
    variant = args.get(ARG_VARIANT)
    return MessageRef(message_id, campaign_id, user_id, channel, str(variant) if variant else None,
                      str(args.get(ARG_STEP) or "send")[:200])


# ---------------------------------------------------------------- SendGrid


def sendgrid_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key as its settings page shows it: base64 DER (a PEM is accepted too)."""
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    key = load_der_public_key(base64.b64decode(body))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the SendGrid verification key is not an elliptic-curve public key")
    return key


def verify_sendgrid(key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None, payload: bytes,
                    now: float, tolerance_s: float = TOLERANCE_S) -> None:
    """Raises ``CallbackRefused`` unless ``signature`` signs ``timestamp + payload`` and the timestamp is recent."""
    if not signature or not timestamp:
        raise CallbackRefused(f"{SENDGRID_SIGNATURE} and {SENDGRID_TIMESTAMP} are required")
    try:
        stamp = float(timestamp)
        der = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise CallbackRefused("the signature or timestamp is malformed") from None
    if base64.b64encode(der).decode() != signature:  # spare bits set in the last character: not as signed
        raise CallbackRefused("the signature is not in canonical base64")
    if abs(now - stamp) > tolerance_s:
        raise CallbackRefused(f"the timestamp is more than {tolerance_s:.0f} s from now: a replay or a wrong clock")
    try:
        key.verify(der, timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise CallbackRefused("the signature does not match the body") from None


# SendGrid's event → Herald's status; None: acknowledged, not a status of the message (processed: accepted
# into SendGrid's queue, which "sent" already says; deferred: SendGrid retries by itself; unsubscribes go
# through Herald's own one-click links, not SendGrid's).
SENDGRID_STATUS: dict[str, str | None] = {
    "processed": None, "deferred": None, "delivered": "delivered", "bounce": "bounced", "dropped": "failed",
    "spamreport": "complained", "open": "opened", "click": "clicked", "unsubscribe": None,
    "group_unsubscribe": None, "group_resubscribe": None,
}


@dataclass(frozen=True, slots=True)
class Read:
    """What a callback request said: the events to publish, and how many of its items were skipped, by why."""

    events: list[DeliveryEvent]
    skipped: dict[str, int]


def _at(value: Any, now: float) -> datetime:
    try:
        stamp = float(value)
    except (TypeError, ValueError):
        stamp = now
    if not 0 < stamp < 32503680000:  # before year 3000: a unix time in seconds
        stamp = now
    return datetime.fromtimestamp(stamp, timezone.utc)


def sendgrid_event(item: Mapping[str, Any], now: float) -> DeliveryEvent | str:
    """One SendGrid event as a delivery event, or why it is skipped."""
    kind = item.get("event")
    if kind not in SENDGRID_STATUS:
        return "unknown_event"
    status = SENDGRID_STATUS[kind]
    if status is None:
        return f"not_counted:{kind}"
    ref = message_ref(item)
    if ref is None:
        return "not_herald"
    event_id = item.get("sg_event_id")
    reason: str | None = None
    machine = False
    if kind == "bounce":
        if item.get("type") == "blocked":  # a soft bounce (the receiver refused for now): not a bad address
            status, reason = "failed", f"blocked: {item.get('reason') or ''}".strip()
        else:
            reason = str(item.get("reason") or "bounce")
    elif kind == "dropped":
        reason = f"dropped: {item.get('reason') or ''}".strip()
    elif kind == "spamreport":
        reason = "complaint"
    elif kind == "click":
        reason = str(item.get("url") or "") or None
    elif kind == "open":
        machine = machine_open(str(item.get("useragent") or ""), str(item.get("ip") or ""),
                               provider_flag=bool(item.get("sg_machine_open")))
    return DeliveryEvent(message_id=ref.message_id, campaign_id=ref.campaign_id, user_id=ref.user_id,
                         channel=ref.channel, step=ref.step, variant=ref.variant, status=status,
                         reason=reason[:500] if reason else None,
                         provider_id=str(item.get("sg_message_id") or "")[:200] or None,
                         event_id=str(event_id)[:200] if event_id else None, machine=machine,
                         at=_at(item.get("timestamp"), now))


def read_sendgrid(items: Any, now: float) -> Read:
    """The events of a verified SendGrid post (a JSON array). Raises ValueError if it is not an array of objects
    of at most ``MAX_EVENTS``."""
    if not isinstance(items, list):
        raise ValueError("the body must be a JSON array of events")
    if len(items) > MAX_EVENTS:
        raise ValueError(f"at most {MAX_EVENTS} events per request")
    events: list[DeliveryEvent] = []
    skipped: dict[str, int] = {}
    for item in items:
        result = sendgrid_event(item, now) if isinstance(item, dict) else "not_an_object"
        if isinstance(result, str):
            skipped[result] = skipped.get(result, 0) + 1
        else:
            events.append(result)
    return Read(events, skipped)


# ---------------------------------------------------------------- Twilio


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature of a form POST to ``url``."""
    data = url + "".join(k + v for k, v in sorted(params, key=lambda kv: (kv[0], kv[1])))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def verify_twilio(auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None) -> None:
    if not signature:
        raise CallbackRefused(f"{TWILIO_SIGNATURE} is required")
    if not hmac.compare_digest(signature.encode(), twilio_signature(auth_token, url, params).encode()):
        raise CallbackRefused("the signature does not match the URL and parameters")


# Twilio's MessageStatus → Herald's status. queued/sending/sent are steps before the handset ("sent" is
# Herald's word for "the provider accepted it", already said when the API answered).
TWILIO_STATUS: dict[str, str | None] = {
    "accepted": None, "scheduled": None, "queued": None, "sending": None, "sent": None, "delivered": "delivered",
    "undelivered": "failed", "failed": "failed", "read": "opened", "canceled": None,
}
# Error codes that mean the number itself is bad: a hard bounce (the number goes on the suppression list).
TWILIO_BAD_NUMBER = frozenset({"21211", "21614", "30003", "30005", "30006"})
TWILIO_OPTED_OUT = frozenset({"21610", "30004"})


def read_twilio(form: Mapping[str, str], query: Mapping[str, str], now: float) -> Read:
    """The delivery event of a verified Twilio status callback (form: Twilio's parameters; query: Herald's)."""
    status_word = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if status_word not in TWILIO_STATUS:
        return Read([], {"unknown_event": 1})
    status = TWILIO_STATUS[status_word]
    if status is None:
        return Read([], {f"not_counted:{status_word}": 1})
    ref = message_ref(query)
    if ref is None:
        return Read([], {"not_herald": 1})
    code = (form.get("ErrorCode") or "").strip()
    reason = None
    if status == "failed":
        if code in TWILIO_BAD_NUMBER:
            status, reason = "bounced", f"twilio {code}: unreachable number"
        elif code in TWILIO_OPTED_OUT:
            reason = f"permanent: twilio {code}: the recipient opted out"
        else:
            reason = f"twilio {status_word}" + (f" {code}" if code else "")
    sid = (form.get("MessageSid") or form.get("SmsSid") or "")[:64]
    event = DeliveryEvent(message_id=ref.message_id, campaign_id=ref.campaign_id, user_id=ref.user_id,
                          channel=ref.channel, step=ref.step, variant=ref.variant, status=status, reason=reason,
                          provider_id=sid or None, event_id=f"{sid}:{status_word}" if sid else None,
                          at=_at(None, now))
    return Read([event], {})

"""Signed unsubscribe tokens: one link that may switch off one channel for one user.

A token is 72 URL-safe base64 characters (no padding) encoding 54 bytes:

    version(1) user_id(8) channel(1) campaign_id(8, 0 = none) issued_at(4, unix s) | HMAC-SHA256(32)

The MAC covers the first 22 bytes and uses the ``"unsubscribe"`` subkey of
the signing key (``pipeline.signing``), so it binds the user, the channel, the
campaign the message came from and the time it was issued, and a signature
made for anything else (a tracked link) is worthless here. Verification
compares MACs in constant time before reading any field but the version.

Tokens do not expire by default: people click unsubscribe links in old mail
for years, CAN-SPAM wants an opt-out to keep working at least 30 days after
the send, and honouring a late unsubscribe is harmless. ``max_age`` lets a
caller bound them anyway.

Pure: no I/O. The API verifies tokens; the email sender (``List-Unsubscribe``
headers, RFC 8058) makes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from config import Settings
from pipeline.signing import purpose_key
from schemas.preferences import CHANNELS
from schemas.encoding import is_bigint_id

VERSION = 1
PURPOSE = "unsubscribe"
_FIELDS = struct.Struct(">BQBQI")  # version, user_id, channel, campaign_id, issued_at
_MAC_BYTES = 32
TOKEN_BYTES = _FIELDS.size + _MAC_BYTES
TOKEN_CHARS = 72  # 54 bytes are exactly 72 base64 characters: no padding, no spare bits
_TOKEN_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_CHARS}}}")
_CHANNEL_CODES = {name: code for code, name in enumerate(CHANNELS, start=1)}
_CHANNEL_NAMES = {code: name for name, code in _CHANNEL_CODES.items()}
ONE_CLICK_PATH = "/u/"


class InvalidUnsubscribeToken(ValueError):
    """The token cannot be trusted; ``code`` says why in a word the API can show."""

    code = "invalid_token"


class MalformedToken(InvalidUnsubscribeToken):
    code = "malformed_token"


class ForgedToken(InvalidUnsubscribeToken):
    code = "invalid_token"


class ExpiredToken(InvalidUnsubscribeToken):
    code = "expired_token"


@dataclass(frozen=True)
class UnsubscribeClaim:
    """What a verified token lets its bearer do: switch ``channel`` off for ``user_id``."""

    user_id: int
    channel: str
    campaign_id: int | None
    issued_at: datetime


def _mac(key: bytes, fields: bytes) -> bytes:
    return hmac.new(purpose_key(key, PURPOSE), fields, hashlib.sha256).digest()


def make_unsubscribe_token(
    key: bytes, user_id: int, channel: str, campaign_id: int | None, now: datetime | None = None
) -> str:
    """A token for ``user_id`` to leave ``channel``, as sent in campaign ``campaign_id`` (None: no campaign)."""
    if channel not in _CHANNEL_CODES:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    if not is_bigint_id(user_id):
        raise ValueError(f"user_id {user_id} is outside 1..2**63-1")
    if campaign_id is not None and not is_bigint_id(campaign_id):
        raise ValueError(f"campaign_id {campaign_id} is outside 1..2**63-1")
    issued = int((now or datetime.now(timezone.utc)).timestamp())
    fields = _FIELDS.pack(VERSION, user_id, _CHANNEL_CODES[channel], campaign_id or 0, issued)
    return base64.urlsafe_b64encode(fields + _mac(key, fields)).decode("ascii")


def read_unsubscribe_token(
    key: bytes, token: str, max_age: timedelta | None = None, now: datetime | None = None
) -> UnsubscribeClaim:
    """The claim a token carries, or ``InvalidUnsubscribeToken`` if it is malformed, forged or too old."""
    if not isinstance(token, str) or not _TOKEN_SHAPE.fullmatch(token):
        raise MalformedToken(f"an unsubscribe token is {TOKEN_CHARS} URL-safe base64 characters")
    raw = base64.urlsafe_b64decode(token)
    fields, mac = raw[: _FIELDS.size], raw[_FIELDS.size :]
    if fields[0] != VERSION:
        raise MalformedToken(f"unknown token version {fields[0]}")
    if not hmac.compare_digest(mac, _mac(key, fields)):
        raise ForgedToken("the token's signature does not match: it was altered or not issued by Herald")
    _, user_id, channel_code, campaign_id, issued = _FIELDS.unpack(fields)
    channel = _CHANNEL_NAMES.get(channel_code)
    if channel is None or user_id == 0:  # signed by us, so only a bug could get here
        raise MalformedToken("the token names no known channel or user")
    issued_at = datetime.fromtimestamp(issued, timezone.utc)
    if max_age is not None and (now or datetime.now(timezone.utc)) - issued_at > max_age:
        raise ExpiredToken(f"the token was issued at {issued_at.isoformat()} and is older than {max_age}")
    return UnsubscribeClaim(user_id=user_id, channel=channel, campaign_id=campaign_id or None, issued_at=issued_at)


def unsubscribe_url(settings: Settings, token: str) -> str:
    """The public one-click link for a token: a confirmation page on GET, the unsubscribe on POST."""
    return f"{settings.public_url.rstrip('/')}{ONE_CLICK_PATH}{token}"


def list_unsubscribe_headers(settings: Settings, token: str) -> dict[str, str]:
    """The RFC 8058 headers an email carries so mail clients can offer one-click unsubscribe.

    The message must also be DKIM-signed over both headers for receivers to
    trust them (RFC 8058 section 4); that is the sender's job. With
    ``list_unsubscribe_mailto`` set, a mailto link (the token in its subject)
    follows the https one, for clients that only mail (RFC 2369).
    """
    links = [f"<{unsubscribe_url(settings, token)}>"]  # the https one first: clients take the first they can use
    if settings.list_unsubscribe_mailto:
        links.append(f"<mailto:{settings.list_unsubscribe_mailto}?subject=unsubscribe%20{token}>")
    return {
        "List-Unsubscribe": ", ".join(links),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }

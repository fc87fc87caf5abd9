"""Open and click tracking for email: a pixel and signed redirect links.

Every ``href`` of an email's HTML becomes ``{public_url}/t/c/{token}``, and a
1×1 pixel ``{public_url}/t/o/{token}`` is added before ``</body>``. The token
carries what the tracking endpoint needs to emit a DeliveryEvent without any
lookup (message id, campaign, user, variant) and, for a click, the target URL,
all signed with the ``"tracked-link"`` subkey of the signing key:

    version(1) message_id(16) campaign_id(8) user_id(8) len(variant)(1) variant url | HMAC-SHA256[:16]

Version 2 (the open pixel of messages rendered since issue 15) adds ``issued_at(4)`` (unix seconds, when the
message was rendered for sending) after ``user_id``: an open within seconds of that is a machine's
prefetch (pipeline/engagement.py). Version 1 tokens, in emails already sent, still verify.

URL-safe base64 without padding. Signing the URL is what keeps the redirect
from being an open redirect: a token whose URL was changed does not verify.
A truncated 128-bit MAC is plenty for a link (forging one is a 2**-128 guess)
and keeps links short. ``purpose_key`` makes these signatures useless as
unsubscribe tokens and the other way round.

Pure: no I/O. The sender rewrites, ``api/tracking.py`` verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html as html_lib
import re
import struct
import uuid
from dataclasses import dataclass

from pipeline.signing import purpose_key

PURPOSE = "tracked-link"
VERSION = 1
TIMED = 2
_HEAD = struct.Struct(">B16sQQB")  # version, message_id, campaign_id, user_id, len(variant)
_TIMED_HEAD = struct.Struct(">B16sQQIB")  # version, message_id, campaign_id, user_id, issued_at, len(variant)
_MAC_BYTES = 16
OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"

# href="..." or href='...' inside an <a> tag (any attributes before it).
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# Links that must not be wrapped: mail/phone links, in-page anchors, template leftovers, and our own links.
_SKIP = ("mailto:", "tel:", "sms:", "#", "{{", "{%")


class InvalidTrackingToken(ValueError):
    """Malformed or forged: the endpoint answers 400."""


@dataclass(frozen=True, slots=True)
class TrackedLink:
    message_id: uuid.UUID
    campaign_id: int
    user_id: int
    variant: str | None
    url: str  # "" for the open pixel
    issued_at: int | None = None  # when the message was rendered (version 2 tokens)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(key: bytes, message_id: uuid.UUID, campaign_id: int, user_id: int, variant: str | None,
               url: str = "", issued_at: int | None = None) -> str:
    """A signed token for a click on ``url`` (or, with ``url=""``, for the open pixel); with ``issued_at``, a
    version 2 token that also says when the message was rendered.

    ``key`` is ``purpose_key(signing_key, "tracked-link")``: derive it once per process.
    """
    variant_bytes = (variant or "").encode()[:255]
    if issued_at is not None:
        head = _TIMED_HEAD.pack(TIMED, message_id.bytes, campaign_id, user_id, issued_at, len(variant_bytes))
    else:
        head = _HEAD.pack(VERSION, message_id.bytes, campaign_id, user_id, len(variant_bytes))
    body = head + variant_bytes + url.encode()
    return _b64(body + hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES])


def read_token(key: bytes, token: str) -> TrackedLink:
    """What a token says, or ``InvalidTrackingToken`` if it is malformed or its signature does not match."""
    try:
        raw = _unb64(token)
    except (binascii.Error, ValueError):
        raise InvalidTrackingToken("not URL-safe base64") from None
    # Only the spelling make_token writes: the decoder also takes "+" and "/", skips stray characters and
    # ignores the last character's spare bits, which would let several strings pass as one token.
    if _b64(raw) != token:
        raise InvalidTrackingToken("not URL-safe base64 as Herald writes it")
    if len(raw) < _HEAD.size + _MAC_BYTES:
        raise InvalidTrackingToken("too short to be a tracking token")
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]):
        raise InvalidTrackingToken("the signature does not match: the link was altered or not made by Herald")
    issued_at = None
    if body[0] == TIMED and len(body) >= _TIMED_HEAD.size:
        version, mid, campaign_id, user_id, issued_at, variant_len = _TIMED_HEAD.unpack_from(body)
        rest = body[_TIMED_HEAD.size:]
    else:
        version, mid, campaign_id, user_id, variant_len = _HEAD.unpack_from(body)
        rest = body[_HEAD.size:]
    if version not in (VERSION, TIMED):
        raise InvalidTrackingToken(f"unknown token version {version}")
    try:
        variant, url = rest[:variant_len].decode(), rest[variant_len:].decode()
    except UnicodeDecodeError:
        raise InvalidTrackingToken("not UTF-8") from None
    return TrackedLink(uuid.UUID(bytes=mid), campaign_id, user_id, variant or None, url, issued_at)


def link_key(signing_key: bytes) -> bytes:
    return purpose_key(signing_key, PURPOSE)


def rewrite_links(html: str, public_url: str, key: bytes, message_id: uuid.UUID, campaign_id: int, user_id: int,
                  variant: str | None, skip_prefixes: tuple[str, ...] = (), issued_at: int | None = None) -> str:
    """``html`` with every trackable ``<a href>`` replaced by a signed redirect and an open pixel added.

    Links whose target starts with one of ``skip_prefixes`` (the unsubscribe
    link: it must work even if tracking is down) are left alone.
    """
    base = public_url.rstrip("/")

    def wrap(match: re.Match[str]) -> str:
        target = html_lib.unescape(match.group(3)).strip()
        if not target or target.startswith(_SKIP) or target.startswith(skip_prefixes) \
                or not target.lower().startswith(("http://", "https://")):
            return match.group(0)
        token = make_token(key, message_id, campaign_id, user_id, variant, target)
        return f"{match.group(1)}{match.group(2)}{base}{CLICK_PATH}{token}{match.group(2)}"

    rewritten = _HREF.sub(wrap, html)
    pixel_token = make_token(key, message_id, campaign_id, user_id, variant, issued_at=issued_at)
    pixel = (f'<img src="{base}{OPEN_PATH}{pixel_token}" width="1" height="1" alt="" '
             'style="display:block;border:0;width:1px;height:1px" />')
    found = None
    for found in _BODY_END.finditer(rewritten):
        pass
    if found is None:
        return rewritten + pixel
    return rewritten[: found.start()] + pixel + rewritten[found.start():]


# The smallest transparent GIF (1×1, 43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

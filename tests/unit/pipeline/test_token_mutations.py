"""Forged or altered tokens are refused: every single-byte change of a valid unsubscribe token, tracking
token or provider callback signature (and of what the signature covers) fails verification.

Hypothesis makes the valid tokens (any user, campaign, variant, URL, body); each is then mutated at every
position to every other character of the base64 alphabets and a few that are in neither. Base64 leaves spare bits in the last character of some lengths
(a 16-byte MAC, a DER signature): a character that differs only there decodes to the same bytes, so the
verifiers must insist on the canonical spelling, which these tests hold them to.
"""

from __future__ import annotations

import base64
import hashlib
import uuid

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import callbacks as cb
from pipeline.channels.tracking import InvalidTrackingToken, link_key, make_token, read_token
from pipeline.unsubscribe import InvalidUnsubscribeToken, make_unsubscribe_token, read_unsubscribe_token
from schemas.preferences import CHANNELS

KEY = hashlib.sha256(b"mutation-test-key").digest()
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
REPLACEMENTS = B64 + "-_+/=.%~ \x00\n\x7f"
ids = st.integers(min_value=1, max_value=2**63 - 1)
SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutations(text: str):
    """Every string that differs from ``text`` in exactly one character (to one of ``REPLACEMENTS``)."""
    for i, original in enumerate(text):
        for c in REPLACEMENTS:
            if c != original:
                yield text[:i] + c + text[i + 1:]


def accepted(verify, forgeries, refused: type[Exception]) -> list:
    """The forgeries that ``verify`` lets through (it raises ``refused`` for the others)."""
    through = []
    for forged in forgeries:
        try:
            verify(forged)
        except refused:
            continue
        through.append(forged)
    return through


@SLOW
@given(user_id=ids, channel=st.sampled_from(CHANNELS), campaign_id=st.none() | ids)
def test_every_one_character_change_of_an_unsubscribe_token_is_refused(user_id, channel, campaign_id):
    token = make_unsubscribe_token(KEY, user_id, channel, campaign_id)
    assert read_unsubscribe_token(KEY, token).user_id == user_id
    assert accepted(lambda t: read_unsubscribe_token(KEY, t), mutations(token), InvalidUnsubscribeToken) == []


@SLOW
@given(user_id=ids, campaign_id=ids, variant=st.none() | st.text("ABCDE", min_size=1, max_size=3),
       url=st.sampled_from(["", "https://shop.example/sale?id=1", "https://e.example/ü/" + "x" * 40]),
       issued_at=st.none() | st.integers(min_value=0, max_value=2**32 - 1))
def test_every_one_character_change_of_a_tracking_token_is_refused(user_id, campaign_id, variant, url, issued_at):
    key = link_key(KEY)
    token = make_token(key, uuid.uuid4(), campaign_id, user_id, variant, url, issued_at=issued_at)
    assert read_token(key, token).url == url
    assert accepted(lambda t: read_token(key, t), mutations(token), InvalidTrackingToken) == []


def test_a_tracking_token_spelled_with_nonzero_spare_bits_is_refused():
    key = link_key(KEY)
    # 16 + 8 + 8 + 1 + 1 + "A" + 16 MAC = 51 bytes: 68 characters, no spare bits; a 1-byte URL makes 52 bytes,
    # whose last character carries 4 spare bits.
    token = make_token(key, uuid.uuid4(), 1, 2, "A", "h")
    assert len(token) % 4 == 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    same_bytes = alphabet[alphabet.index(token[-1]) ^ 1]  # flips a spare bit only
    assert base64.urlsafe_b64decode(token[:-1] + same_bytes + "==") == base64.urlsafe_b64decode(token + "==")
    with pytest.raises(InvalidTrackingToken):
        read_token(key, token[:-1] + same_bytes)


TWILIO_TOKEN = "twilio-auth-token"
TWILIO_URL = "https://herald.example/callbacks/twilio/status?hm=abc"


@SLOW
@given(sid=st.text("0123456789abcdef", min_size=32, max_size=32),
       status=st.sampled_from(["delivered", "undelivered", "failed"]))
def test_every_one_character_change_of_a_twilio_signature_or_what_it_signs_is_refused(sid, status):
    params = [("MessageSid", f"SM{sid}"), ("MessageStatus", status), ("To", "+15550100001")]
    signature = cb.twilio_signature(TWILIO_TOKEN, TWILIO_URL, params)
    cb.verify_twilio(TWILIO_TOKEN, TWILIO_URL, params, signature)
    assert accepted(lambda sig: cb.verify_twilio(TWILIO_TOKEN, TWILIO_URL, params, sig), mutations(signature),
                    cb.CallbackRefused) == []
    for i, (name, value) in enumerate(params):
        changed = (params[:i] + [(name, forged)] + params[i + 1:] for forged in mutations(value))
        assert accepted(lambda p: cb.verify_twilio(TWILIO_TOKEN, TWILIO_URL, p, signature), changed,
                        cb.CallbackRefused) == []
    url_changes = (TWILIO_URL[:i] + c + TWILIO_URL[i + 1:] for i in range(len(TWILIO_URL)) for c in "xX/")
    assert accepted(lambda u: cb.verify_twilio(TWILIO_TOKEN, u, params, signature),
                    (u for u in url_changes if u != TWILIO_URL), cb.CallbackRefused) == []


SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
NOW = 1_765_000_000.0


def _sendgrid_signed(payload: bytes) -> tuple[str, str]:
    stamp = str(int(NOW))
    return base64.b64encode(SENDGRID_KEY.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))).decode(), stamp


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_id=st.uuids(), event=st.sampled_from(["delivered", "bounce", "open", "click"]))
def test_every_one_character_change_of_a_sendgrid_signature_its_timestamp_or_body_is_refused(message_id, event):
    public = SENDGRID_KEY.public_key()
    payload = orjson.dumps([{"event": event, "message_id": str(message_id), "timestamp": int(NOW)}])
    signature, stamp = _sendgrid_signed(payload)
    cb.verify_sendgrid(public, signature, stamp, payload, NOW)
    assert accepted(lambda sig: cb.verify_sendgrid(public, sig, stamp, payload, NOW), mutations(signature),
                    cb.CallbackRefused) == []
    assert accepted(lambda ts: cb.verify_sendgrid(public, signature, ts, payload, NOW), mutations(stamp),
                    cb.CallbackRefused) == []
    bodies = (payload[:i] + bytes([b]) + payload[i + 1:] for i in range(len(payload)) for b in (0x00, 0x20, 0x7b)
              if payload[i] != b)  # each byte of the body, changed
    assert accepted(lambda body: cb.verify_sendgrid(public, signature, stamp, body, NOW), bodies,
                    cb.CallbackRefused) == []

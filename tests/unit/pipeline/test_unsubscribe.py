"""Unsubscribe tokens: they round-trip, and any change to one is refused."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest

from config import Settings
from pipeline.unsubscribe import (
    TOKEN_CHARS,
    ExpiredToken,
    ForgedToken,
    InvalidUnsubscribeToken,
    MalformedToken,
    UnsubscribeClaim,
    list_unsubscribe_headers,
    make_unsubscribe_token,
    read_unsubscribe_token,
    unsubscribe_url,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
ISSUED = datetime(2026, 11, 26, 9, 30, tzinfo=timezone.utc)


def token(user_id=123_456_789_012, channel="email", campaign_id=789, key=KEY, now=ISSUED) -> str:
    return make_unsubscribe_token(key, user_id, channel, campaign_id, now=now)


def _bytes(t: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(t))


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("channel", ["email", "sms", "push", "in_app"])
def test_token_round_trips_user_channel_campaign_and_time(channel):
    claim = read_unsubscribe_token(KEY, token(channel=channel))
    assert claim == UnsubscribeClaim(user_id=123_456_789_012, channel=channel, campaign_id=789, issued_at=ISSUED)


def test_token_without_campaign_reads_back_none():
    assert read_unsubscribe_token(KEY, token(campaign_id=None)).campaign_id is None


def test_token_is_compact_and_url_safe():
    t = token(user_id=2**63 - 1, campaign_id=2**63 - 1)
    assert len(t) == TOKEN_CHARS == 72
    assert set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_same_inputs_give_the_same_token_and_any_field_changes_it():
    assert token() == token()
    variants = {token(), token(user_id=2), token(channel="sms"), token(campaign_id=790),
                token(now=ISSUED + timedelta(seconds=1)), token(key=OTHER_KEY)}
    assert len(variants) == 6


def test_flipping_any_bit_of_any_byte_is_refused():
    raw = _bytes(token())
    for index in range(len(raw)):
        for bit in range(8):
            tampered = bytearray(raw)
            tampered[index] ^= 1 << bit
            with pytest.raises(InvalidUnsubscribeToken):
                read_unsubscribe_token(KEY, _text(tampered))


def test_changing_any_character_is_refused():
    t = token()
    for index, char in enumerate(t):
        replacement = "A" if char != "A" else "B"
        with pytest.raises(InvalidUnsubscribeToken):
            read_unsubscribe_token(KEY, t[:index] + replacement + t[index + 1:])


@pytest.mark.parametrize(
    "field, offset, size",
    [("user_id", 1, 8), ("channel", 9, 1), ("campaign_id", 10, 8), ("issued_at", 18, 4)],
)
def test_rewriting_a_field_with_the_old_signature_is_forged(field, offset, size):
    raw = _bytes(token(channel="email"))
    value = int.from_bytes(raw[offset:offset + size], "big")
    raw[offset:offset + size] = ((value % (2 ** (8 * size) - 2)) + 1).to_bytes(size, "big")  # another valid value
    with pytest.raises(ForgedToken):
        read_unsubscribe_token(KEY, _text(raw))


def test_splicing_another_users_signature_is_forged():
    mine, theirs = _bytes(token(user_id=1)), _bytes(token(user_id=2))
    with pytest.raises(ForgedToken):
        read_unsubscribe_token(KEY, _text(theirs[:22] + mine[22:]))


def test_token_signed_with_another_key_is_forged():
    with pytest.raises(ForgedToken):
        read_unsubscribe_token(KEY, token(key=OTHER_KEY))


def test_plain_hmac_of_the_fields_with_the_master_key_is_forged():
    """The MAC uses the "unsubscribe" subkey, so a signature made for another purpose does not fit."""
    import hashlib
    import hmac

    raw = _bytes(token())
    raw[22:] = hmac.new(KEY, bytes(raw[:22]), hashlib.sha256).digest()
    with pytest.raises(ForgedToken):
        read_unsubscribe_token(KEY, _text(raw))


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "A" * 71, "A" * 73, token()[:-1] + "=", token()[:-1] + "/", token()[:-1] + "+", token() + "\n",
     " " + token()[1:], token().replace(token()[5], "%", 1)],
)
def test_malformed_tokens_are_refused_as_malformed(bad):
    with pytest.raises(MalformedToken):
        read_unsubscribe_token(KEY, bad)


def test_unknown_version_is_malformed():
    raw = _bytes(token())
    raw[0] = 2
    with pytest.raises(MalformedToken):
        read_unsubscribe_token(KEY, _text(raw))


def test_tokens_do_not_expire_unless_a_max_age_is_given():
    old = token(now=ISSUED - timedelta(days=3650))
    assert read_unsubscribe_token(KEY, old).user_id == 123_456_789_012
    with pytest.raises(ExpiredToken):
        read_unsubscribe_token(KEY, old, max_age=timedelta(days=365), now=ISSUED)
    assert read_unsubscribe_token(KEY, token(), max_age=timedelta(days=365), now=ISSUED + timedelta(days=364))


@pytest.mark.parametrize(
    "args", [(0, "email", 1), (2**63, "email", 1), (1, "webhook", 1), (1, "EMAIL", 1), (1, "email", 0)]
)
def test_making_a_token_refuses_values_it_cannot_carry(args):
    with pytest.raises(ValueError):
        make_unsubscribe_token(KEY, *args)


def test_url_and_rfc_8058_headers_point_at_the_one_click_endpoint():
    settings = Settings(public_url="https://mail.example.com/")
    t = token()
    assert unsubscribe_url(settings, t) == f"https://mail.example.com/u/{t}"
    assert list_unsubscribe_headers(settings, t) == {
        "List-Unsubscribe": f"<https://mail.example.com/u/{t}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }

"""The hand-built MIME message parses as the RFCs say, with nothing injected."""

from __future__ import annotations

import email
from email import policy

import pytest

from pipeline.channels.mime import build_email, encode_header_text, format_address


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=policy.default)


def test_multipart_alternative_with_text_and_html_round_trips():
    raw = build_email(sender=format_address("Herald Café <news@herald.local>"), to="zoe@example.com",
                      subject="Soldes d'été: " + "é" * 60, text="Bonjour Zoé\n= 100 %", html="<p>Bonjour Zoé</p>",
                      message_id="m-1", headers={"List-Unsubscribe": "<https://h.example/u/1>",
                                                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})
    message = parse(raw)
    assert message["Subject"] == "Soldes d'été: " + "é" * 60
    assert message["From"].addresses[0].display_name == "Herald Café"
    assert message["To"] == "zoe@example.com" and message["Message-ID"] == "<m-1@herald.local>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Bonjour Zoé\n= 100 %"
    assert message.get_body(("html",)).get_content().strip() == "<p>Bonjour Zoé</p>"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert not message.defects and not any(part.defects for part in message.walk())


def test_text_only_message():
    message = parse(build_email(sender="a@h.local", to="b@example.com", subject="Hi", text="plain", html=None,
                                message_id="m-2"))
    assert message.get_content_type() == "text/plain" and message.get_content().strip() == "plain"


def test_newlines_in_headers_cannot_inject_headers():
    raw = build_email(sender="a@h.local", to="b@example.com", subject="Hi\r\nBcc: victim@example.com", text="x",
                      html=None, message_id="m-3")
    assert b"\r\nBcc:" not in raw and parse(raw)["Subject"] == "Hi Bcc: victim@example.com"


def test_encoded_words_stay_within_75_characters():
    for word in encode_header_text("ж" * 200).split("\r\n "):
        assert len(word) <= 75


def test_bad_recipient_addresses_are_refused():
    with pytest.raises(ValueError):
        build_email(sender="a@h.local", to="not an address", subject="s", text="t", html=None, message_id="m")

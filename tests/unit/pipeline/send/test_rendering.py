"""What the sender renders into a provider's request: tracked links and the open pixel, signed tokens,
and the batch email API's body (pipeline/channels/tracking.py, email_batch.py)."""

from __future__ import annotations

import uuid

import pytest

from pipeline.channels.base import Message
from pipeline.channels.email_batch import MAX_PERSONALIZATIONS, mail_send_body
from pipeline.channels.tracking import (
    CLICK_PATH,
    OPEN_PATH,
    InvalidTrackingToken,
    make_token,
    read_token,
    rewrite_links,
)

KEY = b"k" * 32
MID = uuid.UUID("12345678-1234-5678-1234-567812345678")


# ---------------------------------------------------------------- tracked links


def test_a_click_token_round_trips_what_it_signs():
    token = make_token(KEY, MID, 42, 10**12 + 5, "B", "https://shop.example/sale?x=1&y=2")
    link = read_token(KEY, token)
    assert (link.message_id, link.campaign_id, link.user_id, link.variant, link.url) == (
        MID, 42, 10**12 + 5, "B", "https://shop.example/sale?x=1&y=2")


def test_an_open_token_has_no_url_and_no_variant_when_none():
    link = read_token(KEY, make_token(KEY, MID, 1, 2, None))
    assert (link.url, link.variant) == ("", None)


def test_a_token_with_another_url_does_not_verify():
    token = make_token(KEY, MID, 42, 7, None, "https://shop.example/")
    other = make_token(KEY, MID, 42, 7, None, "https://evil.example/")
    # Splice the evil URL into the honest token's signature: the MAC no longer matches.
    import base64

    def raw(t):
        return base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))

    forged = base64.urlsafe_b64encode(raw(other)[:-16] + raw(token)[-16:]).rstrip(b"=").decode()
    with pytest.raises(InvalidTrackingToken):
        read_token(KEY, forged)


def test_a_token_signed_with_another_key_does_not_verify():
    with pytest.raises(InvalidTrackingToken):
        read_token(b"x" * 32, make_token(KEY, MID, 1, 2, None, "https://a.example/"))


@pytest.mark.parametrize("garbage", ["", "abc", "!!!!", "A" * 80])
def test_garbage_tokens_are_refused(garbage):
    with pytest.raises(InvalidTrackingToken):
        read_token(KEY, garbage)


def test_rewriting_wraps_http_links_and_adds_a_pixel_before_the_body_end():
    html = ('<html><body><p><a class="b" href="https://shop.example/a?x=1&amp;y=2">Shop</a> '
            "<a href='http://blog.example/'>Blog</a> <a href=\"mailto:help@example.com\">Mail</a> "
            '<a href="#top">Top</a> <a href="https://h.example/u/TOKEN">Unsubscribe</a></p></body></html>')
    out = rewrite_links(html, "https://h.example/", KEY, MID, 9, 10, "A", skip_prefixes=("https://h.example/u/",))
    assert "https://shop.example" not in out and "http://blog.example" not in out
    assert 'href="mailto:help@example.com"' in out and 'href="#top"' in out
    assert 'href="https://h.example/u/TOKEN"' in out
    tokens = [part.split('"')[0].split("'")[0] for part in out.split(f"https://h.example{CLICK_PATH}")[1:]]
    assert [read_token(KEY, t).url for t in tokens] == ["https://shop.example/a?x=1&y=2", "http://blog.example/"]
    pixel_at = out.index(f"https://h.example{OPEN_PATH}")
    assert pixel_at < out.index("</body>")
    assert read_token(KEY, out[pixel_at:].split(OPEN_PATH)[1].split('"')[0]).user_id == 10


def test_rewriting_html_without_a_body_appends_the_pixel():
    out = rewrite_links("<p>Hello</p>", "http://h", KEY, MID, 1, 2, None)
    assert out.startswith("<p>Hello</p><img src=\"http://h/t/o/")


def test_a_batch_request_carries_each_recipient_s_own_content():
    messages = [Message(channel="email", to=f"u{i}@example.com", message_id=f"m{i}",
                        parts={"subject": f"S{i}", "html": f"<p>{i}</p>", "text": f"{i}"},
                        headers={"List-Unsubscribe": f"<https://h/u/{i}>"}) for i in range(3)]
    import orjson

    body = orjson.loads(mail_send_body("Herald <c@herald.local>", messages))
    assert body["from"] == {"email": "c@herald.local", "name": "Herald"}
    assert [p["to"][0]["email"] for p in body["personalizations"]] == ["u0@example.com", "u1@example.com",
                                                                       "u2@example.com"]
    assert body["personalizations"][2]["subject"] == "S2"
    assert body["personalizations"][1]["headers"]["List-Unsubscribe"] == "<https://h/u/1>"
    html_placeholder = body["content"][1]["value"]
    assert body["personalizations"][1]["substitutions"][html_placeholder] == "<p>1</p>"
    assert MAX_PERSONALIZATIONS == 1000


def test_a_pixel_token_can_say_when_the_message_was_rendered_and_old_tokens_still_verify():
    timed = read_token(KEY, make_token(KEY, MID, 42, 7, "A", issued_at=1_765_000_000))
    assert (timed.issued_at, timed.campaign_id, timed.user_id, timed.variant, timed.url) == \
        (1_765_000_000, 42, 7, "A", "")
    assert read_token(KEY, make_token(KEY, MID, 42, 7, "A")).issued_at is None

"""Pure decisions of the senders: retry policy, backoff bounds, token bucket math, tracked links,
addresses and outcome events."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.channels import SendResult
from pipeline.channels.email_batch import MAX_PERSONALIZATIONS, mail_send_body
from pipeline.channels.base import Message
from pipeline.channels.tracking import (
    CLICK_PATH,
    OPEN_PATH,
    InvalidTrackingToken,
    make_token,
    read_token,
    rewrite_links,
)
from pipeline.sending import (
    RetryPolicy,
    bucket_take,
    combine,
    message_address,
    narrowed,
    outcome_event,
    plan_content,
)
from schemas.messages import MessageBatch, Recipient, message_id

KEY = b"k" * 32
MID = uuid.UUID("12345678-1234-5678-1234-567812345678")


# ---------------------------------------------------------------- retry policy


def test_backoff_doubles_per_attempt_within_equal_jitter_bounds():
    policy = RetryPolicy(max_attempts=6, base_s=0.5, cap_s=10.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0)]:
        assert policy.delay(attempt, rand=lambda: 0.0) == pytest.approx(ceiling / 2)
        assert policy.delay(attempt, rand=lambda: 1.0) == pytest.approx(ceiling)


def test_backoff_never_exceeds_the_cap():
    policy = RetryPolicy(base_s=0.5, cap_s=3.0)
    assert policy.delay(20, rand=lambda: 1.0) == 3.0
    assert policy.delay(20, rand=lambda: 0.0) == 1.5


@given(st.integers(1, 60), st.floats(0, 1))
def test_backoff_is_always_positive_and_bounded(attempt, r):
    policy = RetryPolicy(base_s=0.2, cap_s=5.0)
    assert 0.1 <= policy.delay(attempt, rand=lambda: r) <= 5.0


def test_retry_after_is_honoured_but_bounded():
    policy = RetryPolicy(base_s=0.5, cap_s=10.0, max_retry_after_s=30.0)
    assert policy.delay(1, retry_after_s=7.0, rand=lambda: 0.0) == 7.0
    assert policy.delay(1, retry_after_s=3600.0, rand=lambda: 0.0) == 30.0
    # A Retry-After shorter than the backoff does not shorten it.
    assert policy.delay(5, retry_after_s=0.1, rand=lambda: 0.0) == 4.0


def test_attempts_are_bounded():
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


# ---------------------------------------------------------------- token bucket


def test_a_full_bucket_grants_up_to_its_burst_then_says_how_long_to_wait():
    granted, wait, left = bucket_take(tokens=100, last=0.0, now=0.0, rate=100, burst=100, wanted=500)
    assert (granted, left) == (100, 0)
    assert wait == pytest.approx(1.0)  # the next burst of 100 needs one second


def test_the_bucket_refills_at_its_rate_and_never_past_the_burst():
    granted, wait, left = bucket_take(tokens=0, last=10.0, now=10.25, rate=100, burst=100, wanted=10)
    assert (granted, wait) == (10, 0.0)
    assert left == pytest.approx(15)
    _, _, left = bucket_take(tokens=0, last=0.0, now=1000.0, rate=100, burst=100, wanted=0)
    assert left == 100


def test_a_partial_token_is_not_granted_and_the_wait_covers_the_missing_fraction():
    granted, wait, left = bucket_take(tokens=0.5, last=0.0, now=0.0, rate=10, burst=10, wanted=1)
    assert granted == 0
    assert wait == pytest.approx(0.05)
    assert left == 0.5


@given(st.floats(0, 1000), st.floats(0, 10), st.integers(1, 10_000), st.floats(1, 10_000))
def test_the_bucket_never_grants_more_than_it_holds(tokens, elapsed, wanted, rate):
    burst = rate
    tokens = min(tokens, burst)
    granted, wait, left = bucket_take(tokens, 0.0, elapsed, rate, burst, wanted)
    assert 0 <= granted <= wanted
    assert granted <= min(burst, tokens + elapsed * rate) + 1e-9
    assert left >= -1e-9
    assert (wait == 0) == (granted == wanted)


def test_over_a_long_run_the_bucket_grants_its_rate():
    tokens, last, now, total = 50.0, 0.0, 0.0, 0
    while now < 10.0:
        granted, wait, tokens = bucket_take(tokens, last, now, rate=50, burst=50, wanted=30)
        last = now
        total += granted
        now += max(wait, 0.001)
    assert 50 * 10 <= total <= 50 * 10 + 50 + 30  # rate × time, plus the initial burst


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


# ---------------------------------------------------------------- addresses, outcomes, content


def test_addresses_per_channel():
    profile = {"email": " ada@example.com ", "phone": "+15551230000", "push_tokens": ["t1", "t2", "t1", ""]}
    assert message_address("email", profile, 5) == ["ada@example.com"]
    assert message_address("sms", profile, 5) == ["+15551230000"]
    assert message_address("push", profile, 5) == ["t1", "t2"]
    assert message_address("in_app", None, 5) == ["5"]
    assert message_address("webhook", None, 5, "https://hook.example/x") == ["https://hook.example/x"]
    assert message_address("email", {"email": None}, 5) == []
    assert message_address("email", {"email": "Ada <ada@example.com>\r\nBcc: x@y.z"}, 5) == []
    assert message_address("sms", None, 5) == []
    assert message_address("webhook", None, 5, None) == []


def test_one_device_accepting_makes_a_push_sent():
    results = [SendResult.permanent("UNREGISTERED", recipient_problem=True), SendResult.sent("p1")]
    assert combine(results).provider_id == "p1"
    assert combine([SendResult.permanent("x", recipient_problem=True), SendResult.transient("503")]).outcome \
        == "transient"
    assert combine([SendResult.permanent("a", recipient_problem=True),
                    SendResult.permanent("b", recipient_problem=True)]).recipient_problem
    assert not combine([SendResult.permanent("a", recipient_problem=True), SendResult.permanent("b")]).recipient_problem


def _batch(**kw) -> MessageBatch:
    return MessageBatch(batch_id="L:0:3:email", campaign_id=77, channel="email", partition=3,
                        recipients=[Recipient(user_id=10**12 + 1, variant="B"), Recipient(user_id=10**12 + 2)], **kw)


def test_outcome_events_name_sent_bounced_and_failed():
    batch = _batch()
    r = batch.recipients[0]
    sent = outcome_event(batch, r, "email", SendResult.sent("250 ok"), 1, 0.001)
    assert (sent.status, sent.provider_id, sent.cost, sent.variant) == ("sent", "250 ok", 0.001, "B")
    assert sent.message_id == message_id(77, r.user_id, "email", "send")
    bounced = outcome_event(batch, r, "email", SendResult.permanent("550 unknown", recipient_problem=True), 1, 0.001)
    assert (bounced.status, bounced.reason, bounced.cost) == ("bounced", "550 unknown", 0.0)
    failed = outcome_event(batch, r, "email", SendResult.permanent("401 bad key"), 1, 0.001)
    assert failed.status == "failed"
    exhausted = outcome_event(batch, r, "email", SendResult.transient("503 busy"), 6, 0.001)
    assert exhausted.status == "failed" and "6 attempt" in exhausted.reason and "503 busy" in exhausted.reason


def test_a_narrowed_batch_keeps_everything_but_the_other_recipients():
    batch = _batch()
    one = narrowed(batch, batch.recipients[1])
    assert one.recipients == [batch.recipients[1]]
    assert (one.campaign_id, one.partition, one.channel, one.step) == (77, 3, "email", "send")


def test_inline_parts_override_the_template_and_a_webhook_payload_object_becomes_json():
    template = {"channel": "email", "parts": {"subject": "T", "html": "<p>T</p>"}, "default_language": "en",
                "translations": {"fr": {"subject": "F"}}, "variants": {}}
    content = plan_content("email", {"template_id": 1, "subject": "Inline"}, template)
    assert content.parts == {"subject": "Inline", "html": "<p>T</p>"}
    assert content.translations == {"fr": {"subject": "F"}}
    hook = plan_content("webhook", {"url": "https://x", "payload": {"name": "{{ first_name }}"}}, None)
    assert hook.parts == {"payload": '{"name":"{{ first_name }}"}'}


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


def test_offsets_are_committed_behind_the_oldest_batch_still_in_flight():
    from pipeline.sending import _Offsets

    offsets = _Offsets()
    for offset in (10, 11, 12):
        offsets.start("p0", offset)
    offsets.start("p1", 5)
    offsets.finish("p0", 11)  # a later batch finishing first does not move the commit past 10
    offsets.finish("p1", 5)
    assert offsets.committable() == {"p0": 10, "p1": 6}
    offsets.committed.update(offsets.committable())
    offsets.finish("p0", 10)
    assert offsets.committable() == {"p0": 12}
    offsets.finish("p0", 12)
    assert offsets.committable() == {"p0": 13}


class _SlowLedger:
    """Records each write and how many were on their way at once."""

    def __init__(self) -> None:
        self.writes: list[dict] = []
        self.busy = 0
        self.most_busy = 0

    async def acked(self, acks) -> None:
        import asyncio

        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        await asyncio.sleep(0.01)
        self.writes.append({k: dict(v) for k, v in acks.items()})
        self.busy -= 1


async def test_ack_writer_writes_answers_as_they_come_one_write_at_a_time():
    import asyncio

    from pipeline.sending import AckWriter

    ledger = _SlowLedger()
    acks = AckWriter(ledger)
    acks.add("k", 1, "p1")
    acks.add("k", 2, None)  # same tick: same write
    await asyncio.sleep(0.002)  # the first write is on its way
    acks.add("k", 3, "p3")
    acks.add("other", 4, "p4")
    assert ledger.writes == []  # nothing stored yet: flush must wait
    await acks.flush()
    assert ledger.writes == [{"k": {1: "p1", 2: "-"}}, {"k": {3: "p3"}, "other": {4: "p4"}}]
    assert ledger.most_busy == 1
    await acks.flush()  # nothing pending: returns at once
    assert len(ledger.writes) == 2

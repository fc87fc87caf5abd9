"""The send stage's decisions (pipeline/send/decisions.py): retry policy, backoff bounds, token bucket
math, addresses, outcome events and content."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import get_settings
from pipeline.channels import SendResult
from pipeline.send.decisions import (
    RetryPolicy,
    bucket_take,
    channel_rate,
    combine,
    message_address,
    narrowed,
    outcome_event,
    plan_content,
)
from schemas.messages import MessageBatch, Recipient, message_id


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


def test_each_channel_sends_at_the_rate_its_setting_names():
    settings = get_settings().model_copy(update={"rate_email": 11.0, "rate_sms": 12.0, "rate_push": 13.0,
                                                 "rate_in_app": 14.0, "rate_webhook": 15.0})
    assert [channel_rate(settings, c) for c in ("email", "sms", "push", "in_app", "webhook")] == [11, 12, 13, 14, 15]

"""Folding delivery events into counters: once per (message, status), exact per reason, replay-proof."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from pipeline import metrics
from schemas import keys
from schemas.messages import DeliveryEvent, DeliveryStatus, message_id

CID = 7


def ev(user: int, status: str, *, channel: str = "email", variant: str | None = "A", reason: str | None = None,
       cost: float = 0.0, campaign: int = CID) -> DeliveryEvent:
    return DeliveryEvent(message_id=message_id(campaign, user, channel), campaign_id=campaign, user_id=user,
                         channel=channel, variant=variant, status=status, reason=reason, cost=cost,
                         at=datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc))


def totals(increments: metrics.Increments, campaign: int = CID) -> dict[str, float]:
    return increments.get(keys.metrics_key(campaign), {})


def test_each_status_of_a_message_is_counted_once_across_batches():
    seen: dict[uuid.UUID, int] = {}
    first = metrics.fold(metrics.collapse([ev(1, "queued"), ev(1, "sent", cost=0.001)]), seen)
    replay = metrics.fold(metrics.collapse([ev(1, "queued"), ev(1, "sent", cost=0.001)]), seen)
    assert totals(first) == {"queued": 1, "sent": 1, "budget_spent": 0.001, metrics.ACCOUNTED: 1}
    assert replay == {}


def test_counts_also_go_to_the_minute_and_hour_of_the_event_per_channel_and_variant():
    inc = metrics.fold(metrics.collapse([ev(1, "sent"), ev(1, "delivered"), ev(2, "sent", variant=None),
                                         ev(3, "suppressed", reason="duplicate")]), {})
    minute = int(datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc).timestamp() // 60)
    series = {"email:A:sent": 1, "email:A:delivered": 1, "email:-:sent": 1, "email:A:suppressed": 1}
    assert inc[keys.minute_metrics_key(CID, minute)] == series
    assert inc[keys.hour_metrics_key(CID, minute // 60)] == series


def test_machine_opens_are_counted_apart_from_peoples_and_complaints_once():
    seen: dict[uuid.UUID, int] = {}
    machine = ev(1, "opened").model_copy(update={"machine": True})
    first = metrics.fold(metrics.collapse([ev(1, "sent"), ev(1, "delivered"), machine, ev(1, "complained")]), seen)
    assert totals(first) == {"sent": 1, "delivered": 1, "machine_opened": 1, "complained": 1, metrics.ACCOUNTED: 1}
    later = metrics.fold(metrics.collapse([machine, ev(1, "opened"), ev(1, "complained")]), seen)
    assert totals(later) == {"opened": 1}  # the person's own open still counts once


def test_a_batch_repeating_an_event_counts_it_once():
    inc = metrics.fold(metrics.collapse([ev(1, "sent", cost=0.5), ev(1, "sent", cost=0.5)]), {})
    assert totals(inc)["sent"] == 1
    assert totals(inc)["budget_spent"] == 0.5


def test_suppressions_are_counted_per_reason_in_totals_and_breakdowns():
    events = [ev(1, "suppressed", reason="unsubscribed"), ev(2, "suppressed", reason="frequency_cap"),
              ev(3, "suppressed", reason="frequency_cap", variant="B"), ev(4, "sent", variant="B")]
    inc = metrics.fold(metrics.collapse(events), {})
    assert totals(inc) == {"suppressed": 3, "suppressed:unsubscribed": 1, "suppressed:frequency_cap": 2,
                           "sent": 1, metrics.ACCOUNTED: 4}
    assert inc[keys.variant_metrics_key(CID, "email", "B")] == {"suppressed": 1, "suppressed:frequency_cap": 1, "sent": 1,
                                                     metrics.ACCOUNTED: 2}
    assert inc[keys.channel_metrics_key(CID, "email")]["suppressed"] == 3


def test_a_message_already_sent_is_not_also_counted_suppressed_when_a_replay_rejudges_it():
    seen: dict[uuid.UUID, int] = {}
    metrics.fold(metrics.collapse([ev(1, "queued"), ev(1, "sent")]), seen)
    inc = metrics.fold(metrics.collapse([ev(1, "suppressed", reason="frequency_cap")]), seen)
    assert inc == {}


def test_a_duplicate_request_of_a_sent_message_counts_once_as_a_duplicate_without_accounting_it_again():
    seen: dict[uuid.UUID, int] = {}
    metrics.fold(metrics.collapse([ev(1, "sent")]), seen)
    inc = metrics.fold(metrics.collapse([ev(1, "suppressed", reason="duplicate")]), seen)
    assert totals(inc) == {"suppressed": 1, "suppressed:duplicate": 1}
    again = metrics.fold(metrics.collapse([ev(1, "suppressed", reason="duplicate")]), seen)
    assert again == {}


def test_a_duplicate_as_first_outcome_accounts_the_message():
    inc = metrics.fold(metrics.collapse([ev(1, "suppressed", reason="duplicate")]), {})
    assert totals(inc) == {"suppressed": 1, "suppressed:duplicate": 1, metrics.ACCOUNTED: 1}


def test_sent_and_suppressed_in_one_batch_counts_the_send_only():
    inc = metrics.fold(metrics.collapse([ev(1, "suppressed", reason="budget"), ev(1, "sent")]), {})
    assert totals(inc) == {"sent": 1, metrics.ACCOUNTED: 1}


def test_delivered_and_bounced_after_sent_do_not_account_the_message_twice():
    seen: dict[uuid.UUID, int] = {}
    metrics.fold(metrics.collapse([ev(1, "sent")]), seen)
    inc = metrics.fold(metrics.collapse([ev(1, "delivered"), ev(2, "sent"), ev(2, "bounced")]), seen)
    assert totals(inc) == {"delivered": 1, "sent": 1, "bounced": 1, metrics.ACCOUNTED: 1}


def test_held_then_cancelled_message_is_accounted_as_cancelled():
    seen: dict[uuid.UUID, int] = {}
    metrics.fold(metrics.collapse([ev(1, "held")]), seen)
    inc = metrics.fold(metrics.collapse([ev(1, "cancelled"), ev(1, "cancelled")]), seen)
    assert totals(inc) == {"cancelled": 1, metrics.ACCOUNTED: 1}


def test_queued_deferred_and_held_do_not_account_a_message():
    inc = metrics.fold(metrics.collapse([ev(1, "queued"), ev(2, "deferred"), ev(3, "held")]), {})
    assert metrics.ACCOUNTED not in totals(inc)


def test_events_without_a_variant_go_to_the_no_variant_breakdown():
    inc = metrics.fold(metrics.collapse([ev(1, "sent", variant=None, channel="sms")]), {})
    assert keys.variant_metrics_key(CID, "sms", None) == f"campaign:{CID}:metrics:sms:-"
    assert inc[keys.variant_metrics_key(CID, "sms", None)]["sent"] == 1


def test_campaigns_in_one_batch_are_counted_apart():
    inc = metrics.fold(metrics.collapse([ev(1, "sent", campaign=1), ev(1, "sent", campaign=2), ev(2, "sent", campaign=2)]), {})
    assert totals(inc, 1)["sent"] == 1
    assert totals(inc, 2)["sent"] == 2


def test_completion_needs_every_expected_message_accounted_and_an_active_campaign():
    assert metrics.is_complete(10, 10, "active")
    assert metrics.is_complete(10, 10, None)
    assert not metrics.is_complete(10, 9, "active")
    assert not metrics.is_complete(None, 10, "active")
    assert not metrics.is_complete(10, 10, "paused")
    assert not metrics.is_complete(10, 10, "cancelled")


def test_message_log_row_is_partitioned_by_campaign_day_and_user_shard():
    e = ev(1_000_000_000_065, "suppressed", reason="budget")
    row = metrics.log_row(e)
    assert row[:3] == (CID, date(2026, 11, 30), 1_000_000_000_065 % 64)
    assert row[4] == e.message_id
    assert abs((row[3] - e.at).total_seconds()) <= 0.011
    assert row[8] == "suppressed" and row[10] == "budget"
    assert row[11]["reason"] == "budget"


def test_two_statuses_of_a_message_in_one_millisecond_get_two_log_rows():
    queued, sent = metrics.log_row(ev(1, "queued")), metrics.log_row(ev(1, "sent"))
    assert (queued[3], queued[4]) != (sent[3], sent[4])
    assert metrics.log_row(ev(1, "sent")) == sent  # a replay rewrites the same row


def test_seen_buckets_spread_messages_over_small_hashes():
    ids = [message_id(CID, u, "email") for u in range(20_000)]
    buckets = {keys.seen_key(CID, metrics.seen_shard(i)) for i in ids}
    assert len(buckets) > 10_000  # ~0.3 messages per bucket here; < 128 per bucket up to ~8M messages


statuses = st.sampled_from(get_args(DeliveryStatus))
reasons = st.sampled_from(["unsubscribed", "frequency_cap", "duplicate", None])
event_lists = st.lists(st.tuples(st.integers(1, 6), statuses, reasons), max_size=30)


@given(st.lists(event_lists, min_size=1, max_size=5))
def test_replaying_any_prefix_of_the_batches_changes_no_counter(batches):
    def run(seq):
        seen: dict[uuid.UUID, int] = {}
        acc: dict[str, dict[str, float]] = {}
        for batch in seq:
            events = [ev(u, s, reason=r if s == "suppressed" else None) for u, s, r in batch]
            for key, fields in metrics.fold(metrics.collapse(events), seen).items():
                for f, v in fields.items():
                    acc.setdefault(key, {}).setdefault(f, 0)
                    acc[key][f] += v
        return acc

    once = run(batches)
    assert run(batches + batches[: len(batches) // 2 + 1]) == once
    # every message is accounted at most once, and suppressed + cancelled never exceed the accounted ones
    t = once.get(keys.metrics_key(CID), {})
    assert t.get(metrics.ACCOUNTED, 0) <= 6
    firsts = t.get("suppressed", 0) - t.get("suppressed:duplicate", 0) + t.get("cancelled", 0)
    assert firsts <= t.get(metrics.ACCOUNTED, 0)


def test_message_log_keeps_what_became_of_a_message_not_its_transit():
    assert [s for s in metrics.STATUSES if not metrics.logged(s)] == ["queued", "deferred", "held"]
    assert all(metrics.logged(s) for s in ("sent", "delivered", "bounced", "failed", "suppressed", "cancelled", "opened"))

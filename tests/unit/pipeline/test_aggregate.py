"""The aggregate's decisions: the fold script's arguments, completion, which events get a log row."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

from pipeline import aggregate, metrics
from schemas import keys
from schemas.messages import DeliveryEvent, message_id

CID = 11
AT = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def ev(user: int, status: str, *, campaign: int = CID, channel: str = "email", reason: str | None = None,
       cost: float = 0.0) -> DeliveryEvent:
    return DeliveryEvent(message_id=message_id(campaign, user, channel), campaign_id=campaign, user_id=user,
                         channel=channel, variant="A", status=status, reason=reason, cost=cost, at=AT)


def test_fold_args_name_each_counter_group_once_and_each_message_with_its_group():
    deltas = metrics.collapse([ev(1, "sent", cost=0.5), ev(2, "sent"), ev(3, "suppressed", reason="unsubscribed")])
    args = aggregate.fold_args(deltas, ttl=60)
    assert args[:2] == [60, 2]  # (email, A, no reason) and (email, A, unsubscribed)
    assert args[2:7] == [keys.metrics_key(CID), keys.channel_metrics_key(CID, "email"),
                         keys.variant_metrics_key(CID, "email", "A"), "suppressed:unknown", CID]
    minute = int(AT.timestamp() // 60)
    assert args[12:22] == [1, keys.minute_metrics_key(CID, minute), keys.hour_metrics_key(CID, minute // 60),
                           "email:A:", keys.dashboard_minute_key(minute), keys.dashboard_day_key(minute // 1440),
                           keys.dashboard_top_key(minute // 1440), "email:", CID, f"{CID}:{minute // 60}"]
    assert args[22] == 3  # messages (the three share one time-series slot)
    first = args[23:30]
    assert first == [keys.seen_key(CID, metrics.seen_shard(deltas[0].message_id)), deltas[0].message_id.bytes,
                     metrics.BIT["sent"], 1, "0.5", "0.0", 1]
    assert args[-4] == 2  # the suppressed message counts in the second group


def test_a_campaign_is_completed_once_every_expected_message_has_an_outcome_while_it_runs():
    assert aggregate.completion(3, 3, "active") == "complete"
    assert aggregate.completion(3, 3, None) == "complete"
    assert aggregate.completion(3, 2, "active") is None


def test_a_paused_campaign_is_decided_later_and_an_ended_one_forgotten():
    assert aggregate.completion(1, 1, "paused") is None
    assert aggregate.completion(1, 0, "cancelled") == "ended"
    assert aggregate.completion(None, 0, "completed") == "ended"


def test_a_campaign_postgres_no_longer_has_leaves_the_open_set():
    assert aggregate.forgotten_after_completing(None)
    assert aggregate.forgotten_after_completing("completed")
    assert aggregate.forgotten_after_completing("cancelled")
    assert not aggregate.forgotten_after_completing("paused")


def test_the_completion_audit_row_says_active_to_completed():
    before, after = aggregate.completed_audit(CID, 4, AT)
    assert before == {"campaign_id": CID, "status": "active"}
    assert after == {"campaign_id": CID, "status": "completed", "version": 4, "completed_at": AT.isoformat()}


def test_queued_held_and_deferred_events_get_no_log_row_and_garbage_is_skipped():
    value = orjson.dumps({"events": [e.model_dump(mode="json") for e in
                                     (ev(1, "queued"), ev(1, "sent"), ev(2, "held"), ev(3, "deferred"))]})
    logged = aggregate.logged_events([value, b"not json", b'{"no": "events"}', None])
    assert [(e.user_id, e.status) for e in logged] == [(1, "sent")]


def test_log_batches_keep_one_partition_each_and_stay_small():
    events = [ev(u, "sent") for u in range(0, 64 * 3)] + [ev(u, "sent", campaign=CID + 1) for u in range(5)]
    batches = aggregate.log_batches(events, size=2)
    for rows in batches:
        assert len(rows) <= 2
        assert len({(r[0], r[1], r[2]) for r in rows}) == 1  # (campaign, day, shard)
    assert sum(len(rows) for rows in batches) == len(events)


def test_an_hour_s_counts_become_campaign_metrics_rows_with_money_in_millionths():
    hour = int(AT.timestamp() // 3600)
    rows = aggregate.hour_rows(CID, hour, {b"email:A:sent": b"12", b"email:x:y:opened": b"3",
                                           b"sms:-:revenue": b"19.99", b"broken": b"1"})
    assert sorted(rows) == sorted([
        (CID, AT.date(), 12, "email", "A", "sent", 12),
        (CID, AT.date(), 12, "email", "x:y", "opened", 3),
        (CID, AT.date(), 12, "sms", "-", "revenue_micros", 19_990_000),
    ])
    assert aggregate.parse_hour_member(b"11:493000") == (11, 493000)
    assert aggregate.parse_hour_member("x:1") is None

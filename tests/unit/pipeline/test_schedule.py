"""The scheduler's decisions: cron occurrences in a time zone across both daylight-saving changes,
which due occurrences fire or are skipped (missed, paused, still sending), end times, run counts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import islice
from zoneinfo import ZoneInfo

from pipeline import schedule
from pipeline.campaigns import next_run

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
DAILY_0230 = {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def local(tz: ZoneInfo, *args, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold).astimezone(timezone.utc)


def take(cron: str, tz: str, after: datetime, n: int) -> list[datetime]:
    return list(islice(schedule.occurrences(cron, tz, after), n))


def test_a_daily_run_in_a_skipped_hour_runs_once_at_the_first_instant_after_the_gap():
    # Berlin springs forward on 2025-03-30 at 02:00 → 03:00: 02:30 does not exist that day.
    runs = take("30 2 * * *", "Europe/Berlin", utc(2025, 3, 28, 12), 4)
    assert runs == [local(BERLIN, 2025, 3, 29, 2, 30), utc(2025, 3, 30, 1, 30), local(BERLIN, 2025, 3, 31, 2, 30),
                    local(BERLIN, 2025, 4, 1, 2, 30)]
    assert runs[1].astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"


def test_a_daily_run_in_a_repeated_hour_runs_once_at_its_first_instance():
    # Berlin falls back on 2025-10-26 at 03:00 → 02:00: 02:30 happens twice; the first one (CEST) runs.
    runs = take("30 2 * * *", "Europe/Berlin", utc(2025, 10, 25, 12), 3)
    assert runs == [local(BERLIN, 2025, 10, 26, 2, 30, fold=0), local(BERLIN, 2025, 10, 27, 2, 30),
                    local(BERLIN, 2025, 10, 28, 2, 30)]
    assert runs[0] == utc(2025, 10, 26, 0, 30)
    assert utc(2025, 10, 26, 1, 30) not in runs  # the second 02:30 (CET)


def test_an_hourly_cron_has_no_duplicate_across_the_gap_and_no_repeat_in_the_fold_new_york():
    spring = take("0 * * * *", "America/New_York", local(NEW_YORK, 2025, 3, 9, 0, 30), 3)
    assert [r.astimezone(NEW_YORK).strftime("%H:%M") for r in spring] == ["01:00", "03:00", "04:00"]
    fall = take("0 * * * *", "America/New_York", local(NEW_YORK, 2025, 11, 2, 0, 30), 3)
    assert [r.astimezone(NEW_YORK).strftime("%H:%M %Z") for r in fall] == ["01:00 EDT", "02:00 EST", "03:00 EST"]
    assert len(set(spring)) == 3 and all(b > a for a, b in zip(fall, fall[1:]))


def test_occurrences_are_strictly_after_the_given_instant_even_inside_a_repeated_hour():
    second_0215 = local(BERLIN, 2025, 10, 26, 2, 15, fold=1)  # CET, after the first 02:30 already passed
    assert schedule.next_occurrence("30 2 * * *", "Europe/Berlin", second_0215) == local(BERLIN, 2025, 10, 27, 2, 30)
    at = local(BERLIN, 2025, 6, 2, 9, 0)
    assert schedule.next_occurrence("0 9 * * *", "Europe/Berlin", at) == at + timedelta(days=1)


def test_the_api_first_run_uses_the_same_wall_time_rule():
    assert next_run(DAILY_0230, utc(2025, 3, 29, 12)) == utc(2025, 3, 30, 1, 30)


def test_launch_ids_are_the_same_for_the_same_occurrence_and_differ_between_runs():
    a = schedule.run_launch_id(7, utc(2026, 1, 5, 9))
    assert a == schedule.run_launch_id(7, utc(2026, 1, 5, 9))
    assert a == schedule.run_launch_id(7, utc(2026, 1, 5, 9).astimezone(BERLIN))
    assert a != schedule.run_launch_id(7, utc(2026, 1, 6, 9)) and a != schedule.run_launch_id(8, utc(2026, 1, 5, 9))


HOURLY = {"cron": "0 * * * *", "timezone": "UTC"}


def test_a_due_recurring_campaign_fires_its_occurrence_and_looks_to_the_next():
    tick = schedule.plan_due("recurring", "scheduled", utc(2026, 1, 5, 9), HOURLY, None, utc(2026, 1, 5, 9, 0, 0, 300))
    assert tick.fire == utc(2026, 1, 5, 9) and tick.skipped == () and tick.next_run_at == utc(2026, 1, 5, 10)


def test_after_downtime_only_the_latest_missed_occurrence_fires_and_the_rest_are_skipped():
    tick = schedule.plan_due("recurring", "scheduled", utc(2026, 1, 5, 6), HOURLY, None, utc(2026, 1, 5, 9, 30))
    assert tick.fire == utc(2026, 1, 5, 9)
    assert tick.skipped == tuple((utc(2026, 1, 5, h), schedule.MISSED) for h in (6, 7, 8))
    assert tick.next_run_at == utc(2026, 1, 5, 10)


def test_a_very_long_downtime_records_only_the_latest_skips():
    tick = schedule.plan_due("recurring", "scheduled", utc(2025, 12, 2), HOURLY, None, utc(2026, 1, 1, 0, 30))
    assert tick.fire == utc(2026, 1, 1) and len(tick.skipped) == schedule.MAX_SKIPS_RECORDED
    assert tick.skipped[-1] == (utc(2025, 12, 31, 23), schedule.MISSED)
    assert tick.missed_unrecorded == 30 * 24 - schedule.MAX_SKIPS_RECORDED


def test_a_paused_or_still_sending_campaign_skips_its_due_occurrences():
    paused = schedule.plan_due("recurring", "paused", utc(2026, 1, 5, 9), HOURLY, None, utc(2026, 1, 5, 9, 1))
    assert paused.fire is None and paused.skipped == ((utc(2026, 1, 5, 9), schedule.PAUSED),)
    assert paused.next_run_at == utc(2026, 1, 5, 10) and not paused.complete
    busy = schedule.plan_due("recurring", "active", utc(2026, 1, 5, 9), HOURLY, None, utc(2026, 1, 5, 9, 1))
    assert busy.fire is None and busy.skipped == ((utc(2026, 1, 5, 9), schedule.STILL_SENDING),)


def test_no_run_starts_at_or_after_the_end_time():
    end = utc(2026, 1, 5, 10)
    last = schedule.plan_due("recurring", "scheduled", utc(2026, 1, 5, 9), HOURLY, end, utc(2026, 1, 5, 9, 0, 1))
    assert last.fire == utc(2026, 1, 5, 9) and last.next_run_at is None  # 10:00 is the end: no run then
    late = schedule.plan_due("recurring", "scheduled", utc(2026, 1, 5, 10), HOURLY, end, utc(2026, 1, 5, 10, 0, 1))
    assert late.fire is None and late.complete
    assert schedule.next_after("recurring", HOURLY, end, utc(2026, 1, 5, 9)) is None


def test_a_one_shot_scheduled_campaign_fires_at_its_start_unless_paused():
    start = utc(2026, 1, 5, 9)
    assert schedule.plan_due("scheduled", "scheduled", start, None, None, start) == schedule.Tick(fire=start)
    paused = schedule.plan_due("scheduled", "paused", start, None, None, start + timedelta(minutes=5))
    assert paused.fire is None and paused.next_run_at == start  # it starts when resumed


def test_a_run_ends_back_in_scheduled_if_another_is_due_else_completed():
    assert schedule.after_run(utc(2026, 1, 6, 9)) == "scheduled"
    assert schedule.after_run(None) == "completed"


def test_a_sending_campaign_expires_once_at_its_end_time():
    end = utc(2026, 1, 5, 10)
    assert schedule.expiring("active", end, None, end)
    assert schedule.expiring("paused", end, None, end + timedelta(seconds=1))
    assert not schedule.expiring("active", end, None, end - timedelta(seconds=1))
    assert not schedule.expiring("active", end, end, end)  # already expired
    assert not schedule.expiring("scheduled", end, None, end) and not schedule.expiring("active", None, None, end)


def test_a_runs_counts_are_the_counters_delta_since_it_began():
    totals = {"sent": 30, "suppressed": 5, "accounted": 40, "budget_spent": 0.03, "delivered": 10}
    base = {"sent": 20, "suppressed": 5, "accounted": 27, "budget_spent": 0.02}
    assert schedule.run_counts(totals, base) == {"sent": 10, "accounted": 13, "budget_spent": 0.01, "delivered": 10}


def test_a_fired_run_is_republished_only_after_the_grace():
    fired = utc(2026, 1, 5, 9)
    assert not schedule.republish_due(fired, fired + timedelta(seconds=2), 3.0)
    assert schedule.republish_due(fired, fired + timedelta(seconds=3), 3.0)


# ---------------------------------------------------------------- end time: expiry across the stages


def test_an_expired_campaign_halts_every_stage_and_its_messages_become_expired_events():
    from pipeline import control

    assert control.status_after("expire") == "expired" and control.halts("expired") and not control.held("expired")
    events = control.halted_events(9, "send@20260105T090000Z", [(1, None), (2, "B")], ["email"], "expired")
    assert [(e["user_id"], e["status"], e["reason"]) for e in events] == [(1, "expired", "end_time"),
                                                                         (2, "expired", "end_time")]
    batch = {"campaign_id": 9, "step": "send", "channel": "sms", "partition": 0,
             "recipients": [{"user_id": 5, "variant": None}]}
    assert [e.status for e in control.cancelled_events(batch, ["sms"], "expired").events] == ["expired"]
    assert control.DROPPING == {"cancel": "cancelled", "expire": "expired"}


def test_an_expired_message_is_an_outcome_counted_once_and_completes_the_campaign():
    from pipeline import metrics

    first = metrics.outcome(metrics.BIT["queued"], metrics.BIT["expired"])
    assert first.counted == ("expired",) and first.accounted
    after_sent = metrics.outcome(metrics.BIT["sent"], metrics.BIT["expired"])
    assert after_sent.counted == () and not after_sent.accounted  # a sent message is not also expired
    assert metrics.is_complete(10, 10, "expired") and not metrics.is_complete(10, 9, "expired")


def test_a_run_that_ends_with_another_to_come_leaves_the_aggregate_open_set():
    from pipeline import aggregate

    assert aggregate.forgotten_after_completing("scheduled") and aggregate.forgotten_after_completing("completed")
    assert not aggregate.forgotten_after_completing("active")

"""The gate's rules (pipeline/gate.py), one behaviour per test, no Kafka."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pytest

from config import Settings
from pipeline import gate as g

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc).timestamp()  # a Monday, noon UTC
EVERYWHERE = g.Profile("UTC", frozenset({"email", "phone", "push"}))
# The tests about other rules send SMS to users without recorded consent: no channel needs opt-in here
# (the opt-in tests, in test_gate_consent.py, use the defaults).
NO_OPT_IN = g.GatePolicy(opt_in_channels=frozenset())


def ask(**kw) -> g.Ask:
    base = dict(campaign_id=7, channel="email", step="send", category="promotional", transactional=False,
                source="0:100", now=NOW, quiet_hours=None, policy=NO_OPT_IN)
    return g.Ask(**(base | kw))


def view(uids, **kw) -> g.GateView:
    return g.GateView(profiles=kw.pop("profiles", {u: EVERYWHERE for u in uids}), **kw)


def one(a: g.Ask, v: g.GateView, uid: int = 1) -> g.Verdict:
    return g.screen(a, [uid], v)[0]


def prefs(**update) -> dict:
    base = {"channels": {"email": True, "sms": True, "push": True, "in_app": True}, "frequency_cap": {},
            "categories": {"promotional": True}, "unsubscribed": []}
    return g.consent_entry(base | update)


# ── consent and addresses ─────────────────────────────────────────────────────

def test_user_without_preferences_is_queued():
    assert one(ask(), view([1])).status == "queued"


def test_unsubscribed_channel_is_suppressed_as_unsubscribed():
    c = prefs(channels={"email": False}, unsubscribed=["email"])
    v = one(ask(), view([1], consent={1: c}))
    assert (v.status, v.reason) == ("suppressed", "unsubscribed")


def test_unsubscribe_from_email_does_not_stop_sms():
    c = prefs(channels={"email": False}, unsubscribed=["email"])
    assert one(ask(channel="sms"), view([1], consent={1: c})).status == "queued"


def test_channel_switched_off_without_unsubscribe_record_is_channel_disabled():
    c = prefs(channels={"push": False})
    assert one(ask(channel="push"), view([1], consent={1: c})).reason == "channel_disabled"


def test_category_opt_out_suppresses_that_category_only():
    c = prefs(categories={"promotional": False, "newsletters": True})
    assert one(ask(), view([1], consent={1: c})).reason == "category_opt_out"
    assert one(ask(category="newsletters"), view([1], consent={1: c})).status == "queued"


def test_suppression_list_wins_over_everything():
    c = prefs(channels={"email": False}, unsubscribed=["email"])
    v = one(ask(), view([1], consent={1: c}, suppressed={1: {"email": "bounce"}}))
    assert v.reason == "suppression_list"


def test_suppression_is_per_channel():
    assert one(ask(channel="sms"), view([1], suppressed={1: {"email": "bounce"}})).status == "queued"


@pytest.mark.parametrize("channel,addresses", [("email", {"phone", "push"}), ("sms", {"email"}), ("push", {"email"})])
def test_missing_address_for_the_channel_is_no_address(channel, addresses):
    v = one(ask(channel=channel), view([1], profiles={1: g.Profile("UTC", frozenset(addresses))}))
    assert v.reason == "no_address"


def test_unknown_user_has_no_address_but_in_app_and_webhook_need_none():
    assert one(ask(), view([1], profiles={})).reason == "no_address"
    assert one(ask(channel="in_app"), view([1], profiles={})).status == "queued"
    assert one(ask(channel="webhook"), view([1], profiles={})).status == "queued"


def test_webhook_ignores_channel_preferences():
    c = prefs(channels={"email": False, "sms": False, "push": False, "in_app": False})
    assert one(ask(channel="webhook"), view([1], consent={1: c})).status == "queued"


def test_transactional_still_respects_unsubscribe():
    c = prefs(channels={"email": False}, unsubscribed=["email"])
    assert one(ask(transactional=True, category="transactional"), view([1], consent={1: c})).reason == "unsubscribed"


# ── dedup ─────────────────────────────────────────────────────────────────────

def released(a: g.Ask, uid: int = 1, history=None, consent=None) -> dict:
    return g.record_releases(a, [g.Verdict(uid, "queued")], {uid: history}, consent or {})[uid]


def test_same_message_from_another_record_within_24h_is_duplicate():
    h = released(ask())
    v = one(ask(source="0:101", now=NOW + 23 * 3600), view([1], history={1: h}))
    assert v.reason == "duplicate"


def test_dedup_expires_after_24h():
    h = released(ask())
    assert one(ask(source="0:101", now=NOW + 24 * 3600), view([1], history={1: h})).status == "queued"


def test_dedup_is_per_campaign_channel_and_step():
    h = released(ask())
    for other in ({"campaign_id": 8}, {"channel": "sms"}, {"step": "reminder"}):
        assert one(ask(source="0:101", **other), view([1], history={1: h})).status == "queued"


def test_same_record_replayed_releases_again_without_counting_twice():
    a = ask()
    h = released(a, consent={1: prefs(frequency_cap={"email": 1})})
    c = {1: prefs(frequency_cap={"email": 1})}
    v = one(a, view([1], history={1: h}, consent=c))
    assert (v.status, v.replay) == ("queued", True)
    assert g.record_releases(a, [v], {1: h}, c) == {}


def test_replayed_deferral_keeps_its_release_time():
    a = ask()
    h = g.record_releases(a, [g.Verdict(1, "deferred", release_at=NOW + 3600)], {1: None}, {})[1]
    v = one(a, view([1], history={1: h}))
    assert (v.status, v.release_at, v.replay) == ("deferred", NOW + 3600, True)


def test_old_dedup_marks_are_pruned_when_the_user_is_touched():
    h = released(ask(campaign_id=1))
    h = released(ask(campaign_id=2, now=NOW + 25 * 3600), history=h)
    assert list(h["d"]) == ["2:email:send"]


def test_a_write_on_one_channel_keeps_the_users_own_longer_window_on_the_others():
    c = {1: prefs(frequency_cap={"sms": 1}, frequency_cap_window_days=14)}
    h = {"c": {"sms": [NOW - 10 * 86400]}}  # 10 days ago: inside the user's 14, outside the default 7
    h = released(ask(channel="email"), history=h, consent=c)
    assert h["c"]["sms"] == [NOW - 10 * 86400]
    assert one(ask(channel="sms", now=NOW + 1), view([1], consent=c, history={1: h})).reason == "frequency_cap"


def test_sweep_drops_what_expired_and_the_users_left_with_nothing():
    live = released(ask(campaign_id=1))
    old = released(ask(campaign_id=2, now=NOW - 8 * 86400))  # dedup and cap both out of their windows
    mixed = {"d": {"3:email:send": [NOW - 2 * 86400, "0:1"]}, "c": {"email": [NOW - 2 * 86400]}}
    swept = g.sweep({"1": live, "2": old, "3": mixed}, None, NOW)
    assert swept == {"1": live, "3": {"c": {"email": [NOW - 2 * 86400]}}}
    assert g.sweep({"2": old}, None, NOW) == {}


def test_sweep_keeps_cap_times_inside_a_users_own_window():
    h = {"c": {"sms": [NOW - 10 * 86400]}}
    consent = {"1": prefs(frequency_cap={"sms": 1}, frequency_cap_window_days=14)}
    assert g.sweep({"1": h}, consent, NOW) == {"1": h}
    assert g.sweep({"1": h}, None, NOW) == {}


# ── frequency caps ────────────────────────────────────────────────────────────

def history_with(times, channel="email"):
    return {"c": {channel: list(times)}}


def test_user_at_their_cap_is_capped():
    c = {1: prefs(frequency_cap={"email": 2})}
    v = one(ask(), view([1], consent=c, history={1: history_with([NOW - 10, NOW - 20])}))
    assert v.reason == "frequency_cap"


def test_user_below_cap_is_queued():
    c = {1: prefs(frequency_cap={"email": 3})}
    assert one(ask(), view([1], consent=c, history={1: history_with([NOW - 10, NOW - 20])})).status == "queued"


def test_sends_older_than_the_window_do_not_count():
    c = {1: prefs(frequency_cap={"email": 1}, frequency_cap_window_days=2)}
    h = history_with([NOW - 2 * 86400])  # exactly the window ago: out
    assert one(ask(), view([1], consent=c, history={1: h})).status == "queued"
    h = history_with([NOW - 2 * 86400 + 1])
    assert one(ask(), view([1], consent=c, history={1: h})).reason == "frequency_cap"


def test_cap_is_per_channel():
    c = {1: prefs(frequency_cap={"email": 1})}
    assert one(ask(channel="sms"), view([1], consent=c, history={1: history_with([NOW - 1])})).status == "queued"


def test_transactional_bypasses_caps_and_does_not_count():
    a = ask(transactional=True, category="transactional")
    c = {1: prefs(frequency_cap={"email": 1})}
    assert one(a, view([1], consent=c, history={1: history_with([NOW - 1])})).status == "queued"
    assert "c" not in released(a)


def test_default_cap_applies_to_users_without_their_own():
    capped = ask(policy=g.GatePolicy(frequency_caps={"email": 1}))
    assert one(ask(), view([1], history={1: history_with([NOW - 1])})).status == "queued"
    assert one(capped, view([1], history={1: history_with([NOW - 1])})).reason == "frequency_cap"
    c = {1: prefs(frequency_cap={"email": 5})}
    assert one(capped, view([1], consent=c, history={1: history_with([NOW - 1])})).status == "queued"


def test_policy_comes_from_settings():
    settings = Settings(gate_quiet_hours="22:30-07:00", gate_quiet_hours_by_default=True,
                        gate_frequency_caps="email=3, sms=1", gate_cap_window_days=2, gate_dedup_window_s=600)
    policy = g.GatePolicy.from_settings(settings)
    assert policy == g.GatePolicy(quiet_hours=(time(22, 30), time(7)), quiet_hours_by_default=True,
                                  frequency_caps={"email": 3, "sms": 1}, cap_window_days=2, dedup_window_s=600)
    assert g.quiet_window(None, policy) == (time(22, 30), time(7))
    assert g.cap_of("sms", None, policy) == (1, 2 * 86400)


def test_dedup_window_is_configurable():
    marked = {"d": {g.dedup_key(7, "email", "send"): [NOW - 700, "0:1"]}}
    assert one(ask(), view([1], history={1: marked})).reason == "duplicate"
    short = ask(policy=g.GatePolicy(dedup_window_s=600))
    assert one(short, view([1], history={1: marked})).status == "queued"


def test_second_release_in_one_batch_sequence_hits_the_cap():
    c = {1: prefs(frequency_cap={"email": 1})}
    h = released(ask(campaign_id=1), consent=c)
    assert one(ask(campaign_id=2, source="0:101"), view([1], consent=c, history={1: h})).reason == "frequency_cap"


# ── quiet hours ───────────────────────────────────────────────────────────────

def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def test_outside_quiet_hours_nothing_is_deferred():
    assert g.quiet_hours_end(utc(2024, 1, 15, 12), "Europe/Paris") is None


def test_late_evening_defers_to_next_morning_local():
    # 22:30 in Paris (winter, UTC+1) → 08:00 Paris next day = 07:00 UTC
    assert g.quiet_hours_end(utc(2024, 1, 15, 21, 30), "Europe/Paris") == utc(2024, 1, 16, 7)


def test_early_morning_defers_to_the_same_morning():
    assert g.quiet_hours_end(utc(2024, 1, 15, 5), "Europe/Paris") == utc(2024, 1, 15, 7)


def test_window_edges_start_inclusive_end_exclusive():
    assert g.quiet_hours_end(utc(2024, 1, 15, 20), "Europe/Paris") == utc(2024, 1, 16, 7)  # 21:00 local
    assert g.quiet_hours_end(utc(2024, 1, 15, 7), "Europe/Paris") is None  # 08:00 local
    assert g.quiet_hours_end(utc(2024, 1, 15, 19, 59), "Europe/Paris") is None  # 20:59 local


def test_summer_time_moves_the_release_instant():
    assert g.quiet_hours_end(utc(2024, 7, 15, 3), "Europe/Paris") == utc(2024, 7, 15, 6)  # 08:00 CEST


def test_night_of_spring_forward_ends_at_local_eight():
    # Paris springs forward 2024-03-31 02:00→03:00; 23:00 CET on the 30th → 08:00 CEST on the 31st = 06:00 UTC
    assert g.quiet_hours_end(utc(2024, 3, 30, 22), "Europe/Paris") == utc(2024, 3, 31, 6)


def test_night_of_fall_back_ends_at_local_eight():
    # New York falls back 2024-11-03 02:00→01:00; 23:00 EDT on the 2nd → 08:00 EST = 13:00 UTC
    assert g.quiet_hours_end(utc(2024, 11, 3, 3), "America/New_York") == utc(2024, 11, 3, 13)


def test_end_inside_a_dst_gap_resolves_after_the_gap():
    window = (time(1, 0), time(2, 30))  # 02:30 does not exist in Paris on 2024-03-31
    end = g.quiet_hours_end(utc(2024, 3, 31, 0, 30), "Europe/Paris", window)  # 01:30 CET
    assert end == utc(2024, 3, 31, 1, 30)  # 03:30 CEST, one hour after 01:30 CET


def test_time_zones_on_both_sides_of_utc():
    now = utc(2024, 1, 15, 12)  # 21:00 in Tokyo, 07:00 in New York, 12:00 in London
    assert g.quiet_hours_end(now, "Asia/Tokyo") == utc(2024, 1, 15, 23)  # 08:00 JST next day
    assert g.quiet_hours_end(now, "America/New_York") == utc(2024, 1, 15, 13)
    assert g.quiet_hours_end(now, "Europe/London") is None


def test_half_hour_zone():
    # 23:00 in Kolkata (UTC+5:30) → 08:00 IST = 02:30 UTC
    assert g.quiet_hours_end(utc(2024, 1, 15, 17, 30), "Asia/Kolkata") == utc(2024, 1, 16, 2, 30)


def test_unknown_time_zone_is_treated_as_utc():
    assert g.quiet_hours_end(utc(2024, 1, 15, 22), "Mars/Olympus") == utc(2024, 1, 16, 8)


def test_window_within_one_day():
    window = (time(12, 0), time(14, 0))
    assert g.quiet_hours_end(utc(2024, 1, 15, 13), "UTC", window) == utc(2024, 1, 15, 14)
    assert g.quiet_hours_end(utc(2024, 1, 15, 14), "UTC", window) is None


def test_screen_defers_during_quiet_hours_and_transactional_goes_now():
    night = utc(2024, 1, 15, 23).timestamp()
    v = one(ask(now=night, quiet_hours=g.DEFAULTS.quiet_hours), view([1]))
    assert (v.status, v.release_at) == ("deferred", utc(2024, 1, 16, 8).timestamp())
    t = one(ask(now=night, quiet_hours=g.DEFAULTS.quiet_hours, transactional=True), view([1]))
    assert t.status == "queued"


def test_campaign_without_quiet_hours_is_not_deferred():
    assert one(ask(now=utc(2024, 1, 15, 23).timestamp(), quiet_hours=None), view([1])).status == "queued"


def test_deferred_message_counts_towards_cap_at_its_release_time():
    h = g.record_releases(ask(), [g.Verdict(1, "deferred", release_at=NOW + 3600)], {1: None}, {})[1]
    assert h["c"]["email"] == [NOW + 3600]


def test_quiet_window_from_a_campaign_schedule():
    assert g.quiet_window(True) == g.DEFAULTS.quiet_hours
    assert g.quiet_window({"start": "22:00", "end": "07:30"}) == (time(22), time(7, 30))
    assert g.quiet_window(False) is None
    assert g.quiet_window(None) is None  # off unless configured
    assert g.quiet_window(None, g.GatePolicy(quiet_hours_by_default=True)) == g.DEFAULTS.quiet_hours


# ── each recipient's local hour ───────────────────────────────────────────────

NINE = g.LocalDelivery(time(9, 0))


def zoned(*zones: str) -> dict[int, g.Profile]:
    return {i: g.Profile(z, frozenset({"email"})) for i, z in enumerate(zones, start=1)}


def local_ask(launched: datetime, delivery: g.LocalDelivery = NINE, after_s: float = 0.0, **kw) -> g.Ask:
    return ask(now=launched.timestamp() + after_s, launched_at=launched.timestamp(), local=delivery, **kw)


def outcome(verdicts) -> dict[int, tuple]:
    return {v.user_id: (v.status, v.reason, v.release_at and datetime.fromtimestamp(v.release_at, timezone.utc))
            for v in verdicts}


def test_each_user_is_released_at_nine_on_their_own_clock():
    # Launched Monday 2024-01-15 07:00 UTC: 08:00 in Berlin, 02:00 in New York, 12:30 in Kolkata, 20:00 in Auckland
    launched = utc(2024, 1, 15, 7)
    profiles = zoned("Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Auckland")
    got = outcome(g.screen(local_ask(launched), list(profiles), view(list(profiles), profiles=profiles)))
    assert got == {
        1: ("deferred", "local_time", utc(2024, 1, 15, 8)),        # 09:00 CET
        2: ("deferred", "local_time", utc(2024, 1, 15, 14)),       # 09:00 EST
        3: ("deferred", "local_time", utc(2024, 1, 16, 3, 30)),    # passed: 09:00 IST tomorrow (+05:30)
        4: ("deferred", "local_time", utc(2024, 1, 15, 20)),       # passed: 09:00 NZDT on the 16th
    }


def test_hour_passed_is_skipped_when_the_campaign_says_skip():
    launched = utc(2024, 1, 15, 7)
    profiles = zoned("Europe/Berlin", "Asia/Kolkata", "Pacific/Auckland")
    skip = g.LocalDelivery(time(9, 0), "skip")
    got = outcome(g.screen(local_ask(launched, skip), list(profiles), view(list(profiles), profiles=profiles)))
    assert got == {1: ("deferred", "local_time", utc(2024, 1, 15, 8)),
                   2: ("suppressed", "local_time_passed", None), 3: ("suppressed", "local_time_passed", None)}


def test_user_whose_hour_is_the_launch_instant_goes_at_once():
    launched = utc(2024, 1, 15, 3, 30)  # 09:00 in Kolkata
    profiles = zoned("Asia/Kolkata", "Europe/Berlin")
    got = outcome(g.screen(local_ask(launched), [1, 2], view([1, 2], profiles=profiles)))
    assert got == {1: ("queued", None, None), 2: ("deferred", "local_time", utc(2024, 1, 15, 8))}


def test_a_batch_screened_after_the_users_hour_came_sends_at_once_not_tomorrow():
    # Launched 03:29 UTC, the batch reaches the gate at 03:31: 09:00 IST (03:30 UTC) came in between.
    launched = utc(2024, 1, 15, 3, 29)
    v = one(local_ask(launched, after_s=120), view([1], profiles=zoned("Asia/Kolkata")))
    assert (v.status, v.release_at) == ("queued", None)


def test_every_batch_of_a_launch_gives_a_user_the_same_instant():
    launched = utc(2024, 1, 15, 7)
    profiles = zoned("America/New_York")
    early = one(local_ask(launched, after_s=1), view([1], profiles=profiles))
    late = one(local_ask(launched, after_s=1800), view([1], profiles=profiles))
    assert early.release_at == late.release_at == utc(2024, 1, 15, 14).timestamp()


def test_spring_forward_day_moves_the_instant_by_the_new_offset():
    # New York springs forward 2024-03-10 02:00 EST → 03:00 EDT: 09:00 that day is 13:00 UTC, not 14:00
    assert g.local_release(utc(2024, 3, 10, 5), "America/New_York", NINE) == utc(2024, 3, 10, 13)
    assert g.local_release(utc(2024, 3, 9, 5), "America/New_York", NINE) == utc(2024, 3, 9, 14)


def test_an_hour_that_does_not_exist_that_day_resolves_after_the_gap():
    # 02:30 does not exist in Berlin on 2024-03-31 (02:00 CET → 03:00 CEST): sent at 03:30 CEST = 01:30 UTC
    half_two = g.LocalDelivery(time(2, 30))
    assert g.local_release(utc(2024, 3, 30, 23), "Europe/Berlin", half_two) == utc(2024, 3, 31, 1, 30)


def test_an_hour_that_occurs_twice_is_sent_at_its_first_occurrence():
    # New York falls back 2024-11-03 02:00 EDT → 01:00 EST: 01:30 happens twice, the first is 05:30 UTC
    half_one = g.LocalDelivery(time(1, 30))
    assert g.local_release(utc(2024, 11, 3, 4), "America/New_York", half_one) == utc(2024, 11, 3, 5, 30)


def test_next_day_across_a_dst_change_keeps_the_wall_clock_hour():
    # Launched 2024-03-30 12:00 UTC (13:00 CET): 09:00 passed, tomorrow 09:00 is CEST = 07:00 UTC
    assert g.local_release(utc(2024, 3, 30, 12), "Europe/Berlin", NINE) == utc(2024, 3, 31, 7)


def test_users_without_a_time_zone_use_the_campaigns():
    launched = utc(2024, 1, 15, 7)
    berlin = g.LocalDelivery(time(9, 0), timezone="Europe/Berlin")
    profiles = {1: g.Profile("UTC", frozenset({"email"})), 2: g.Profile("", frozenset({"email"})),
                3: g.Profile("Mars/Olympus", frozenset({"email"})), 4: g.Profile("America/New_York", frozenset({"email"}))}
    got = outcome(g.screen(local_ask(launched, berlin), [1, 2, 3, 4], view([1, 2, 3, 4], profiles=profiles)))
    assert {u: r[2] for u, r in got.items()} == {1: utc(2024, 1, 15, 8), 2: utc(2024, 1, 15, 8),
                                                 3: utc(2024, 1, 15, 8), 4: utc(2024, 1, 15, 14)}
    # No profile at all (in-app needs no address): the campaign's zone too
    v = one(local_ask(launched, berlin, channel="in_app"), view([9], profiles={}), uid=9)
    assert v.release_at == utc(2024, 1, 15, 8).timestamp()


def test_local_hour_inside_quiet_hours_moves_to_their_end():
    launched = utc(2024, 1, 15, 5)  # 06:00 in Berlin
    seven = g.LocalDelivery(time(7, 0))
    quiet = (time(21, 0), time(8, 0))
    v = one(local_ask(launched, seven, quiet_hours=quiet), view([1], profiles=zoned("Europe/Berlin")))
    assert (v.status, v.release_at) == ("deferred", utc(2024, 1, 15, 7).timestamp())  # 08:00 CET, not 07:00


def test_local_hour_reads_quiet_hours_in_the_campaigns_zone_for_users_without_one():
    launched = utc(2024, 1, 15, 12)  # 13:00 in Berlin; at 22:00 Berlin (21:00 UTC) quiet hours have begun
    ten_pm = g.LocalDelivery(time(22, 0), timezone="Europe/Berlin")
    v = one(local_ask(launched, ten_pm, quiet_hours=(time(21, 0), time(8, 0))), view([1]))
    assert v.release_at == utc(2024, 1, 16, 7).timestamp()  # 08:00 CET the next morning


def test_a_capped_user_is_capped_before_their_local_hour_is_considered():
    history = {1: {"c": {"email": [NOW - 60]}}}
    consent = {1: {"caps": {"email": 1}}}
    v = one(local_ask(utc(2024, 1, 15, 12), g.LocalDelivery(time(8, 0), "skip")),
            view([1], history=history, consent=consent))
    assert (v.status, v.reason) == ("suppressed", "frequency_cap")


def test_a_local_hour_deferral_is_recorded_for_dedup_and_caps_at_once():
    a = local_ask(utc(2024, 1, 15, 7))
    (v,) = g.screen(a, [1], view([1], profiles=zoned("America/New_York")))
    h = g.record_releases(a, [v], {1: None}, {})[1]
    assert h["c"]["email"] == [utc(2024, 1, 15, 14).timestamp()]
    assert h["d"][g.dedup_key(7, "email", "send")][2] == utc(2024, 1, 15, 14).timestamp()
    again = one(local_ask(utc(2024, 1, 15, 7), source="3:9"), view([1], profiles=zoned("America/New_York"),
                                                                    history={1: h}))
    assert (again.status, again.reason) == ("suppressed", "duplicate")


def test_without_a_launch_time_the_local_hour_counts_from_now():
    a = ask(now=utc(2024, 1, 15, 7).timestamp(), local=NINE)
    assert one(a, view([1], profiles=zoned("Europe/Berlin"))).release_at == utc(2024, 1, 15, 8).timestamp()


def test_local_delivery_from_a_campaigns_stored_option():
    assert g.local_delivery(None) is None
    assert g.local_delivery({}) is None
    assert g.local_delivery({"local_time": "09:00"}) == g.LocalDelivery(time(9, 0), "next_day", "UTC")
    assert g.local_delivery({"local_time": "18:30", "if_passed": "skip"}).if_passed == "skip"
    schedule = {"cron": "0 9 * * MON", "timezone": "Asia/Tokyo"}
    assert g.local_delivery({"local_time": "09:00"}, schedule).timezone == "Asia/Tokyo"
    assert g.local_delivery({"local_time": "09:00", "timezone": "Europe/Paris"}, schedule).timezone == "Europe/Paris"


# ── budget ────────────────────────────────────────────────────────────────────

def test_budget_cuts_the_tail_of_the_releases():
    vs = [g.Verdict(1, "queued"), g.Verdict(2, "suppressed", "duplicate"), g.Verdict(3, "queued"),
          g.Verdict(4, "deferred", release_at=NOW), g.Verdict(5, "queued")]
    g.cut_to_budget(vs, 2)
    assert [(v.user_id, v.status, v.reason) for v in vs] == [
        (1, "queued", None), (2, "suppressed", "duplicate"), (3, "queued", None),
        (4, "suppressed", "budget"), (5, "suppressed", "budget")]


def test_affordable_never_passes_max_spend():
    assert g.affordable(1000, 0.001, 0.0, 0.5) == 500
    assert g.affordable(1000, 0.001, 0.4995, 0.5) == 0
    assert g.affordable(10, 0.0075, 0.0, 0.03) == 4
    assert g.affordable(10, 0.001, 0.6, 0.5) == 0
    assert g.affordable(10, 0.0, 5.0, 0.5) == 10  # free channel
    assert g.affordable(10, 0.001, 0.0, None) == 10  # no budget


def test_budget_suppressed_users_are_not_recorded():
    vs = [g.Verdict(1, "queued"), g.Verdict(2, "queued")]
    g.cut_to_budget(vs, 1)
    assert list(g.record_releases(ask(), vs, {}, {})) == [1]


# ── replicas and grouping ─────────────────────────────────────────────────────

def test_preference_update_replaces_the_users_entry_and_tombstone_removes_it():
    b = g.apply_preference(None, 1, {"channels": {"email": False}, "unsubscribed": ["email"],
                                     "categories": {"promotional": False}, "frequency_cap": {"sms": 3},
                                     "frequency_cap_window_days": 7})
    assert b == {"1": {"off": ["email"], "unsub": ["email"], "cat_off": ["promotional"], "caps": {"sms": 3}, "win": 7, "ok": []}}
    b = g.apply_preference(b, 2, {"channels": {}, "unsubscribed": [], "categories": {}, "frequency_cap": {}})
    assert set(g.apply_preference(b, 1, None)) == {"2"}


@pytest.mark.parametrize("event,reason", [
    ({"status": "bounced", "reason": "550 no such user"}, "bounce"),
    ({"status": "failed", "reason": "permanent: unregistered token"}, "permanent_failure"),
    ({"status": "delivered", "reason": "complaint"}, "complaint"),
    ({"status": "failed", "reason": "timeout after 5 attempts"}, None),
    ({"status": "suppressed", "reason": "budget"}, None),
])
def test_which_delivery_events_feed_the_suppression_list(event, reason):
    assert g.suppression_of(event) == reason


def test_suppressions_accumulate_per_user_and_channel():
    b = g.apply_suppressions(None, [(1, "email", "bounce")])
    b = g.apply_suppressions(b, [(1, "sms", "permanent_failure"), (1, "email", "complaint"), (2, "push", "bounce")])
    assert b == {"1": {"email": "bounce", "sms": "permanent_failure"}, "2": {"push": "bounce"}}


def test_users_of_a_batch_fall_into_few_buckets():
    uids = list(range(10_000, 10_000 + 4000, 8))  # 500 users of one partition, consecutive ids
    groups = g.group_by_bucket(3, uids)
    assert sum(map(len, groups.values())) == 500
    assert len(groups) <= 9 and all(k.startswith("3:") for k in groups)


def test_events_and_outbox_batches_have_the_schema_shapes():
    from schemas.messages import DeliveryEvent, MessageBatch, message_id
    e = g.delivery_event(7, 1, "email", "send", "A", "suppressed", "budget", "2024-01-15T12:00:00+00:00")
    assert DeliveryEvent.model_validate(e).message_id == message_id(7, 1, "email", "send")
    req = {"batch_id": "L:0:3", "campaign_id": 7, "partition": 3, "recipients": [], "channel": None}
    out = MessageBatch.model_validate(g.outbox_batch(req, "sms", [{"user_id": 1}]))
    assert (out.batch_id, out.channel, out.partition) == ("L:0:3:sms", "sms", 3)


@pytest.mark.parametrize("cid,uid,channel,step", [(7, 1, "email", "send"), (2**62, 10**15 + 3, "in_app", "reminder-2")])
def test_fast_message_id_equals_the_schema_message_id(cid, uid, channel, step):
    from schemas.messages import message_id
    assert g.message_id_text(cid, uid, channel, step) == str(message_id(cid, uid, channel, step))


# ── sweeping the history table ───────────────────────────────────────────────

def test_sweeps_walk_one_partitions_buckets_a_few_per_batch_and_delete_the_empty_ones():
    old = released(ask(now=NOW - 8 * 86400))
    live = released(ask())
    table = {f"0:{b}": {"1": old} for b in range(5)} | {"0:9": {"1": old, "2": live}, "1:0": {"1": old}}
    sweeps = g.Sweeps(table, {}, g.DEFAULTS, every_s=600, per_batch=4)
    assert sweeps.step(0, NOW) == 4
    assert sweeps.step(0, NOW) == 2
    assert table == {"0:9": {"2": live}, "1:0": {"1": old}}  # partition 1 is its own records' to sweep
    assert sweeps.step(0, NOW + 1) == 0  # nothing listed again before every_s
    table["0:3"] = {"1": old}
    assert sweeps.step(0, NOW + 599) == 0
    assert sweeps.step(0, NOW + 600) == 1 and "0:3" not in table
    assert sweeps.step(1, NOW) == 1 and table == {"0:9": {"2": live}}

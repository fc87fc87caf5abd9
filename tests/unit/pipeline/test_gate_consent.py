"""Opt-in channels and SMS quiet hours in the gate (pipeline/gate.py), with the default policy."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pytest

from config import Settings
from pipeline import gate as g
from schemas.preferences import Preferences, record_consent

EVERYWHERE = g.Profile("UTC", frozenset({"email", "phone", "push"}))
NOON = datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc)


def ask(channel: str = "sms", at: datetime = NOON, quiet=None, transactional: bool = False, **kw) -> g.Ask:
    return g.Ask(campaign_id=7, channel=channel, step="send", category="promotional", transactional=transactional,
                 source="0:1", now=at.timestamp(), quiet_hours=quiet, **kw)


def verdict(a: g.Ask, consent: dict | None = None, profile: g.Profile = EVERYWHERE) -> g.Verdict:
    view = g.GateView(consent={1: consent} if consent is not None else {}, profiles={1: profile})
    return g.screen(a, [1], view)[0]


def entry(prefs: Preferences) -> dict:
    return g.consent_entry(prefs.to_update().model_dump(mode="json"))


def granted(channel: str = "sms") -> dict:
    return entry(record_consent(Preferences(user_id=1), channel, True, "signup_form", NOON, "sms-terms-v3"))


# ── consent on opt-in channels ────────────────────────────────────────────────

def test_sms_needs_opt_in_by_default():
    assert g.DEFAULTS.opt_in_channels == {"sms"}
    assert g.GatePolicy.from_settings(Settings()).opt_in_channels == {"sms"}


def test_sms_to_a_user_the_replica_does_not_know_is_suppressed_no_consent():
    v = verdict(ask())
    assert (v.status, v.reason) == ("suppressed", "no_consent")


def test_sms_to_a_user_with_preferences_but_no_consent_is_suppressed_no_consent():
    assert verdict(ask(), entry(Preferences(user_id=1))).reason == "no_consent"


def test_sms_to_a_user_who_granted_consent_is_queued():
    assert verdict(ask(), granted()).status == "queued"


def test_consent_withdrawn_is_an_unsubscribe_not_missing_consent():
    prefs = record_consent(Preferences(user_id=1), "sms", True, "signup_form", NOON, "sms-terms-v3")
    prefs = record_consent(prefs, "sms", False, "sms_keyword", NOON)
    assert verdict(ask(), entry(prefs)).reason == "unsubscribed"


def test_transactional_sms_needs_consent_too():
    assert verdict(ask(transactional=True)).reason == "no_consent"


def test_email_needs_no_opt_in_by_default():
    assert verdict(ask(channel="email")).status == "queued"


def test_opt_in_channels_are_configurable():
    policy = g.GatePolicy.from_settings(Settings(gate_opt_in_channels="push, email"))
    assert policy.opt_in_channels == {"push", "email"}
    assert verdict(ask(policy=policy)).status == "queued"
    assert verdict(ask(channel="push", policy=policy)).reason == "no_consent"
    none = g.GatePolicy.from_settings(Settings(gate_opt_in_channels=""))
    assert none.opt_in_channels == frozenset() and verdict(ask(policy=none)).status == "queued"


def test_no_consent_comes_after_the_suppression_list():
    view = g.GateView(suppressed={1: {"sms": "bounce"}}, profiles={1: EVERYWHERE})
    assert g.screen(ask(), [1], view)[0].reason == "suppression_list"


def test_consent_on_email_does_not_count_for_sms():
    assert verdict(ask(), granted("email")).reason == "no_consent"


# ── SMS quiet hours: sent 08:00-21:00 in the recipient's zone ─────────────────

def sms_window(spec=None, policy: g.GatePolicy = g.DEFAULTS):
    return g.channel_quiet_window(spec, "sms", policy)


def test_sms_has_quiet_hours_by_default_other_channels_do_not():
    assert sms_window() == (time(21, 0), time(8, 0))
    assert g.channel_quiet_window(None, "email") is None
    assert g.GatePolicy.from_settings(Settings()).channel_quiet_hours == {"sms": (time(21, 0), time(8, 0))}


def test_a_campaigns_own_quiet_hours_win_for_sms():
    assert sms_window(False) is None
    assert sms_window({"start": "22:00", "end": "09:00"}) == (time(22), time(9))


def test_sms_quiet_hours_are_configurable():
    policy = g.GatePolicy.from_settings(Settings(gate_channel_quiet_hours="sms=20:00-09:30, push=23:00-07:00"))
    assert sms_window(policy=policy) == (time(20), time(9, 30))
    assert g.channel_quiet_window(None, "push", policy) == (time(23), time(7))
    off = g.GatePolicy.from_settings(Settings(gate_channel_quiet_hours=""))
    assert sms_window(policy=off) is None


@pytest.mark.parametrize("local,deferred_to", [
    ("07:59", "08:00"),  # a minute before the window opens
    ("08:00", None),  # the first minute it is open
    ("20:59", None),  # the last minute
    ("21:00", "08:00+1"),  # closed: tomorrow morning
    ("23:30", "08:00+1"),
    ("00:00", "08:00"),
    ("03:15", "08:00"),
])
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Sydney"])
def test_sms_outside_08_to_21_local_is_deferred_to_08_local(local, deferred_to, zone):
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    at = datetime.combine(datetime(2024, 1, 15).date(), time.fromisoformat(local), tzinfo=tz)
    a = ask(at=at.astimezone(timezone.utc), quiet=sms_window())
    v = verdict(a, granted(), g.Profile(zone, frozenset({"phone"})))
    if deferred_to is None:
        assert v.status == "queued"
        return
    day = 16 if deferred_to.endswith("+1") else 15
    expected = datetime(2024, 1, day, 8, 0, tzinfo=tz)
    assert (v.status, v.release_at) == ("deferred", expected.timestamp())


def test_sms_quiet_hours_follow_dst():
    # New York, the morning clocks spring forward (10 March 2024): 08:00 EDT is 12:00 UTC, not 13:00.
    at = datetime(2024, 3, 10, 6, 30, tzinfo=timezone.utc)  # 01:30 EST
    v = verdict(ask(at=at, quiet=sms_window()), granted(), g.Profile("America/New_York", frozenset({"phone"})))
    assert v.release_at == datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc).timestamp()


def test_transactional_sms_ignores_quiet_hours():
    at = datetime(2024, 1, 15, 23, 0, tzinfo=timezone.utc)
    assert verdict(ask(at=at, quiet=sms_window(), transactional=True), granted()).status == "queued"


# ---------------------------------------------------------------- consent an upstream profile carries


def _change(granted: bool, at=None, source: str = "signup_form"):
    from schemas.preferences import ConsentChange

    return ConsentChange(granted=granted, source=source, text_version="v1" if granted else None, at=at)


def test_upstream_consent_is_recorded_with_its_time_and_a_replay_changes_nothing():
    from datetime import datetime, timedelta, timezone

    from schemas.preferences import stored_preferences, upstream_consent

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = t0 + timedelta(days=3)
    start = stored_preferences(7, None, ["sms"])
    after = upstream_consent(start, {"sms": _change(True)}, t0, now)
    assert after.consent["sms"].granted and after.consent["sms"].at == t0 and after.sms_enabled
    assert after.consent["sms"].source == "signup_form" and after.consent["sms"].text_version == "v1"
    assert "sms" in after.to_update().consented
    assert upstream_consent(after, {"sms": _change(True)}, t0, now) is after  # the same profile again


def test_a_newer_recorded_decision_stands_against_an_older_upstream_one():
    from datetime import datetime, timedelta, timezone

    from schemas.preferences import record_consent, stored_preferences, upstream_consent

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    granted = upstream_consent(stored_preferences(7, None, ["sms"]), {"sms": _change(True)}, t0, t0)
    stopped = record_consent(granted, "sms", False, "sms_keyword", t0 + timedelta(hours=1))
    assert upstream_consent(stopped, {"sms": _change(True)}, t0, t0 + timedelta(days=1)) is stopped
    # A newer upstream decision (the person ticked the box again later) does apply.
    again = upstream_consent(stopped, {"sms": _change(True, at=t0 + timedelta(days=2))}, t0, t0 + timedelta(days=2))
    assert again.consent["sms"].granted and again.sms_enabled

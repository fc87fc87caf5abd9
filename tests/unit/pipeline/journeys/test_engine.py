"""pipeline.journeys.engine: one user through one flow. Every call goes through ``call``, which checks
that the engine did not mutate the member it was given."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import datetime, timezone

import pytest

from pipeline.journeys import engine
from pipeline.journeys.engine import (
    ENTERED, K, LAST, MARKS, NODE, SEEN, SEEN_KEPT, SINCE, V, WAKE,
    Facts, Flow, NeedFacts, SendAction, admit, campaign_flow, leave, listens, on_engagement, on_event, on_wake, start,
)
from pipeline.journeys.model import parse_journey, parse_rule
from pipeline.journeys.rules import Event
from tests.helpers.journey_specs import spec_workflow

DAY = 86_400
HOUR = 3_600
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc).timestamp()  # a Monday, 11:00 in Paris
UID = 42
NO_FACTS = Facts()


def spec_body(goal: dict | None = None) -> dict:
    body = spec_workflow()
    if goal is not None:
        body["goal"] = goal
    return body


def body_of(*nodes: dict, goal: dict | None = None, **entry) -> dict:
    """entry (on "signup", or as ``entry`` says) → the nodes, the first one "a" → exit "done"."""
    rule = entry or {"event": "signup"}
    body = {"name": "J", "nodes": [{"id": "start", "type": "entry", **rule, "next": "a"}, *nodes,
                                   {"id": "done", "type": "exit"}]}
    if goal is not None:
        body["goal"] = goal
    return body


def send(node_id: str, nxt: str = "done", channel: str = "email") -> dict:
    return {"id": node_id, "type": "send", "channel": channel, "template_id": 1, "next": nxt}


def flow_of(body: dict, key: str = "j1", version: int = 1, live: bool = True) -> Flow:
    journey = parse_journey(body)
    return Flow(key, version, journey, {s.id: 100 + i for i, s in enumerate(journey.sends())}, live=live)


SPEC = flow_of(spec_body())
CAMPAIGN = {"email": 100, "push": 101, "sms": 102}


def call(fn, flow, member, *args):
    """``fn(flow, member, *args)``, checking that ``member`` is left as it was."""
    before = copy.deepcopy(member)
    out = fn(flow, member, *args)
    assert member == before, "the engine mutated the member it was given"
    return out


def begin(flow: Flow = SPEC, now: float = T0, facts: Facts = NO_FACTS, prev: list | None = None,
          seen: list[str] | None = None, uid: int = UID):
    kept = copy.deepcopy(prev)
    out = start(flow, prev, uid, seen if seen is not None else [f"e:signup@{now}"], now, facts)
    assert prev == kept
    return out


def wake(flow, member, now, facts=NO_FACTS, uid=UID):
    return call(on_wake, flow, member, uid, now, facts)


def event(flow, member, name, at, now=None, facts=NO_FACTS, uid=UID, **props):
    return call(on_event, flow, member, uid, Event(uid, name, at, props, f"{name}@{at}"), now or at, facts)


def engage(flow, member, node_id, kind, now, facts=NO_FACTS, uid=UID):
    return call(on_engagement, flow, member, uid, node_id, kind, now, facts)


def sent(out) -> list[tuple[str, str, str | None]]:
    return [(s.node, s.step, s.channel) for s in out.sends]


# ── The spec's workflow ───────────────────────────────────────────────────────


def test_entering_sends_the_email_and_parks_at_the_first_wait():
    out = begin(seen=["d:x", "e:1"])
    assert out.entered and out.before is None and out.exit is None and not out.converted
    assert out.sends == [SendAction("email", CAMPAIGN["email"], f"email@{int(T0)}", "email")]
    m = out.member
    assert (m[V], m[K], m[NODE], m[ENTERED], m[SINCE], m[WAKE], m[MARKS], m[LAST], m[SEEN]) == \
        (1, 1, "wait1", T0, T0, T0 + DAY, None, T0, ["d:x", "e:1"])
    assert (out.node, out.wake_at) == ("wait1", T0 + DAY)


def test_a_user_who_ignores_everything_gets_email_then_push_a_day_later_then_sms_two_days_after():
    m = begin().member
    assert wake(SPEC, m, T0 + DAY - 1) is None  # not due yet
    out = wake(SPEC, m, T0 + DAY)
    assert out.before == "wait1" and sent(out) == [("push", f"push@{int(T0)}", "push")]
    assert (out.node, out.member[SINCE], out.wake_at) == ("wait2", T0 + DAY, T0 + 3 * DAY)
    assert wake(SPEC, out.member, T0 + 3 * DAY - 1) is None
    out = wake(SPEC, out.member, T0 + 3 * DAY)
    assert sent(out) == [("sms", f"sms@{int(T0)}", "sms")] and out.exit == "exit"
    assert (out.node, out.wake_at, out.member[MARKS]) == (None, None, None)
    assert out.member[K] == 1 and out.member[LAST] == T0  # kept for the re-entry policy
    assert wake(SPEC, out.member, T0 + 9 * DAY) is None  # left: nothing more


def test_a_user_who_opens_gets_no_push_and_then_the_sms_since_they_did_not_convert():
    m = begin().member
    out = engage(SPEC, m, "email", "opened", T0 + HOUR)
    assert out is not None and out.sends == [] and out.node == "wait1" and out.wake_at == T0 + DAY
    assert out.member[MARKS] == {"o": ["email"]}
    assert engage(SPEC, out.member, "email", "opened", T0 + 2 * HOUR) is None  # nothing new
    out = wake(SPEC, out.member, T0 + DAY)
    assert out.sends == [] and out.node == "wait2" and out.wake_at == T0 + 3 * DAY
    out = wake(SPEC, out.member, T0 + 3 * DAY)
    assert sent(out) == [("sms", f"sms@{int(T0)}", "sms")] and out.exit == "exit"


def test_a_user_who_clicks_gets_no_push_either():
    m = begin().member
    out = engage(SPEC, m, "email", "clicked", T0 + HOUR)
    assert out.member[MARKS] == {"c": ["email"], "o": ["email"]}  # a click implies an open
    out = wake(SPEC, out.member, T0 + DAY)
    assert out.sends == [] and out.node == "wait2"


def test_a_user_who_buys_during_a_wait_exits_at_once_and_gets_nothing_more():
    m = wake(SPEC, begin().member, T0 + DAY).member  # got the push, at wait2
    out = event(SPEC, m, "purchase", T0 + 2 * DAY, amount=30)
    assert out.exit == "goal" and out.converted and out.sends == []
    assert (out.before, out.node, out.wake_at) == ("wait2", None, None)
    assert wake(SPEC, out.member, T0 + 3 * DAY) is None
    assert event(SPEC, out.member, "purchase", T0 + 4 * DAY) is None
    assert engage(SPEC, out.member, "email", "opened", T0 + 4 * DAY) is None


def test_a_goal_that_does_not_exit_marks_the_user_converted_and_skips_the_sms():
    flow = flow_of(spec_body(goal={"event": "purchase", "exit": False}))
    m = begin(flow).member
    out = event(flow, m, "purchase", T0 + HOUR)
    assert out.converted and out.exit is None and out.node == "wait1" and out.member[MARKS] == {"g": 1}
    assert event(flow, out.member, "purchase", T0 + 2 * HOUR) is None  # converted once
    out = wake(flow, out.member, T0 + DAY)
    assert sent(out) == [("push", f"push@{int(T0)}", "push")]
    out = wake(flow, out.member, T0 + 3 * DAY)
    assert out.sends == [] and out.exit == "exit"


def test_a_goal_with_a_filter_ignores_other_events():
    flow = flow_of(spec_body(goal={"event": "purchase", "where": [{"field": "amount", "operator": "greater_than",
                                                                   "value": 50}]}))
    m = begin(flow).member
    assert event(flow, m, "purchase", T0 + HOUR, amount=20) is None
    assert event(flow, m, "page_view", T0 + HOUR, amount=99) is None
    assert event(flow, m, "purchase", T0 + HOUR, amount=80).exit == "goal"


def test_an_event_from_before_the_entry_is_ignored():
    m = begin().member
    assert event(SPEC, m, "purchase", T0 - 1, now=T0 + HOUR) is None


def test_leave_takes_the_user_out():
    m = begin().member
    out = leave(copy.deepcopy(m), "stopped")
    assert out.exit == "stopped" and out.before == "wait1" and out.node is None and out.sends == []
    before = copy.deepcopy(m)
    leave(m, "stopped")
    assert m == before
    assert leave(out.member, "stopped") is None


def test_listens_names_the_events_members_care_about():
    assert listens(SPEC, Event(1, "purchase", T0, {}, "e"))
    assert listens(SPEC, Event(1, "signup", T0, {}, "e"))
    assert not listens(SPEC, Event(1, "page_view", T0, {}, "e"))


# ── Late wakes: moves happen at the timer's time ──────────────────────────────


def test_a_late_wake_moves_the_user_at_the_timers_time():
    m = begin().member
    out = wake(SPEC, m, T0 + DAY + 5 * HOUR)
    assert sent(out) == [("push", f"push@{int(T0)}", "push")]
    assert out.member[SINCE] == T0 + DAY and out.wake_at == T0 + 3 * DAY  # not 5 hours later


def test_a_very_late_wake_catches_up_on_the_schedule():
    out = wake(SPEC, begin().member, T0 + 10 * DAY)
    assert sent(out) == [("push", f"push@{int(T0)}", "push"), ("sms", f"sms@{int(T0)}", "sms")] and out.exit == "exit"


def test_on_wake_ignores_a_member_without_a_timer():
    m = begin().member
    assert wake(SPEC, [*m[:WAKE], None, *m[WAKE + 1:]], T0 + 5 * DAY) is None


# ── Waits for events ──────────────────────────────────────────────────────────


OPENED = flow_of(body_of(
    send("a", "w"),
    {"id": "w", "type": "wait_for_event", "event": "opened", "of": "a", "timeout": "1_day", "next": "thanks",
     "timeout_next": "nudge"},
    send("thanks"), send("nudge", channel="push")))


def test_an_open_within_the_wait_takes_the_next_branch():
    m = begin(OPENED).member
    assert (m[NODE], m[WAKE]) == ("w", T0 + DAY)
    out = engage(OPENED, m, "a", "opened", T0 + HOUR)
    assert [s.step for s in out.sends] == [f"thanks@{int(T0)}"] and out.exit == "exit" and out.before == "w"
    out = engage(OPENED, m, "a", "clicked", T0 + HOUR)  # a click is an open too
    assert [s.step for s in out.sends] == [f"thanks@{int(T0)}"]


def test_no_open_within_the_wait_takes_the_timeout_branch():
    m = begin(OPENED).member
    assert wake(OPENED, m, T0 + DAY - 1) is None
    out = wake(OPENED, m, T0 + DAY)
    assert sent(out) == [("nudge", f"nudge@{int(T0)}", "push")] and out.exit == "exit"


def test_engagement_with_another_message_or_kind_does_not_end_the_wait():
    m = begin(OPENED).member
    assert engage(OPENED, m, "a", "bounced", T0 + HOUR) is None
    out = engage(OPENED, m, "nudge", "opened", T0 + HOUR)
    assert out.sends == [] and out.node == "w" and out.member[MARKS] == {"o": ["nudge"]}


def test_a_wait_for_a_click_is_not_ended_by_an_open():
    flow = flow_of(body_of(
        send("a", "w"),
        {"id": "w", "type": "wait_for_event", "event": "clicked", "of": "a", "timeout": "1_day", "next": "thanks",
         "timeout_next": "done"}, send("thanks")))
    m = begin(flow).member
    out = engage(flow, m, "a", "opened", T0 + HOUR)
    assert out.sends == [] and out.node == "w"
    out = engage(flow, out.member, "a", "clicked", T0 + 2 * HOUR)
    assert [s.step for s in out.sends] == [f"thanks@{int(T0)}"]


def test_an_open_before_the_user_reaches_the_wait_counts():
    flow = flow_of(body_of(
        send("a", "pause"), {"id": "pause", "type": "wait", "duration": "1_hour", "next": "w"},
        {"id": "w", "type": "wait_for_event", "event": "opened", "of": "a", "timeout": "1_day", "next": "thanks",
         "timeout_next": "done"}, send("thanks")))
    m = engage(flow, begin(flow).member, "a", "opened", T0 + 60).member
    out = wake(flow, m, T0 + HOUR)
    assert [s.step for s in out.sends] == [f"thanks@{int(T0)}"] and out.exit == "exit"


APP_OPEN = flow_of(body_of(
    send("a", "w"),
    {"id": "w", "type": "wait_for_event", "event": "app_open", "timeout": "2_days", "next": "yes",
     "timeout_next": "no", "where": [{"field": "platform", "operator": "equals", "value": "ios"}]},
    send("yes", "later"), {"id": "later", "type": "wait", "duration": "1_day", "next": "done"}, send("no")))


def test_a_wait_for_a_user_event_reads_its_filter():
    m = begin(APP_OPEN).member
    assert event(APP_OPEN, m, "app_open", T0 + HOUR, platform="android") is None
    assert event(APP_OPEN, m, "app_close", T0 + HOUR, platform="ios") is None
    out = event(APP_OPEN, m, "app_open", T0 + HOUR, now=T0 + 2 * HOUR, platform="ios")
    assert [s.step for s in out.sends] == [f"yes@{int(T0)}"]
    assert out.node == "later" and out.member[SINCE] == T0 + HOUR and out.wake_at == T0 + HOUR + DAY


def test_a_wait_for_a_user_event_times_out():
    out = wake(APP_OPEN, begin(APP_OPEN).member, T0 + 2 * DAY)
    assert [s.step for s in out.sends] == [f"no@{int(T0)}"] and out.exit == "exit"


def test_an_event_after_the_timeout_does_not_end_the_wait_even_when_the_timer_has_not_fired_yet():
    """The timeout happened first (at T0 + 2 days): the user takes the timeout branch, as the definition implies."""
    m = begin(APP_OPEN).member
    out = event(APP_OPEN, m, "app_open", T0 + 3 * DAY, platform="ios")
    assert out is None or out.sends == []
    out = wake(APP_OPEN, (out.member if out else m), T0 + 3 * DAY)
    assert [s.step for s in out.sends] == [f"no@{int(T0)}"]


# ── Conditions ────────────────────────────────────────────────────────────────


def branches(test: dict, goal: dict | None = None) -> Flow:
    return flow_of(body_of({"id": "a", "type": "wait", "duration": "1_day", "next": "c"},
                           {"id": "c", "type": "condition", "if": test, "then": "yes", "else": "no"},
                           send("yes"), send("no"), goal=goal))


def test_a_condition_on_an_event_since_entry():
    flow = branches({"event": "app_open"})
    m = begin(flow).member
    assert event(flow, m, "app_open", T0 - 1, now=T0 + 1) is None  # before entry
    out = event(flow, m, "app_open", T0 + HOUR)
    assert out.sends == [] and out.member[MARKS] == {"e": ["app_open"]}
    assert event(flow, out.member, "app_open", T0 + 2 * HOUR) is None  # already noted
    assert [s.node for s in wake(flow, out.member, T0 + DAY).sends] == ["yes"]
    assert [s.node for s in wake(flow, m, T0 + DAY).sends] == ["no"]


def test_the_goal_event_of_a_goal_that_does_not_exit_also_counts_for_waits_and_conditions():
    goal = {"event": "purchase", "exit": False}
    flow = branches({"event": "purchase"}, goal=goal)
    out = event(flow, begin(flow).member, "purchase", T0 + HOUR)
    assert out.converted and out.member[MARKS] == {"g": 1, "e": ["purchase"]}
    assert [s.node for s in wake(flow, out.member, T0 + DAY).sends] == ["yes"]
    flow = flow_of(body_of(
        {"id": "a", "type": "wait_for_event", "event": "purchase", "timeout": "3_days", "next": "thanks",
         "timeout_next": "remind"}, send("thanks"), send("remind"), goal=goal))
    out = event(flow, begin(flow).member, "purchase", T0 + DAY)
    assert out.converted and [s.node for s in out.sends] == ["thanks"] and out.exit == "exit"


@pytest.mark.parametrize("profile, branch", [
    ({"attributes": {"plan": "pro"}}, "yes"),
    ({"attributes": {"plan": "free"}}, "no"),
    ({"attributes": {}}, "no"),
    ({}, "no"),
    (None, "no"),  # no such user
])
def test_a_condition_on_a_profile_attribute(profile, branch):
    flow = branches({"attribute": {"field": "plan", "operator": "equals", "value": "pro"}})
    m = begin(flow).member
    assert [s.node for s in wake(flow, m, T0 + DAY, Facts(profile=profile)).sends] == [branch]


def test_a_condition_on_a_built_in_profile_field():
    flow = branches({"attribute": {"field": "country", "operator": "in", "value": ["fr", "de"]}})
    m = begin(flow).member
    assert [s.node for s in wake(flow, m, T0 + DAY, Facts(profile={"country": "FR"})).sends] == ["yes"]
    assert [s.node for s in wake(flow, m, T0 + DAY, Facts(profile={"country": "US"})).sends] == ["no"]
    flow = branches({"attribute": {"field": "created_at", "operator": "before", "value": "2026-01-01"}})
    old = {"created_at": datetime(2025, 1, 1, tzinfo=timezone.utc), "attributes": {}}
    assert [s.node for s in wake(flow, begin(flow).member, T0 + DAY, Facts(profile=old)).sends] == ["yes"]


def test_a_condition_needs_the_profile_or_the_segment_it_reads():
    flow = branches({"attribute": {"field": "plan", "operator": "exists"}})
    m = begin(flow).member
    with pytest.raises(NeedFacts) as need:
        wake(flow, m, T0 + DAY)
    assert need.value.profile is True and need.value.segment is None
    flow = branches({"segment": 9})
    m = begin(flow).member
    with pytest.raises(NeedFacts) as need:
        wake(flow, m, T0 + DAY, Facts(profile=None))
    assert need.value.segment == 9 and need.value.profile is False
    assert [s.node for s in wake(flow, m, T0 + DAY, Facts(segments={9: True})).sends] == ["yes"]
    assert [s.node for s in wake(flow, m, T0 + DAY, Facts(segments={9: False})).sends] == ["no"]


# ── Waits until a time or a date ──────────────────────────────────────────────


def until(**spec) -> Flow:
    return flow_of(body_of({"id": "a", "type": "wait", **spec, "next": "s"}, send("s", "w"),
                           {"id": "w", "type": "wait", "duration": "1_day", "next": "again"}, send("again")))


def utc(*parts) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("now, zone, due", [
    (utc(2026, 1, 15, 10, 0), "Europe/Paris", utc(2026, 1, 16, 8, 0)),   # 11:00 in Paris: tomorrow 09:00 CET
    (utc(2026, 1, 15, 7, 0), "Europe/Paris", utc(2026, 1, 15, 8, 0)),    # 08:00 in Paris: today 09:00
    (utc(2026, 7, 15, 5, 0), "Europe/Paris", utc(2026, 7, 15, 7, 0)),    # summer: 09:00 CEST is 07:00 UTC
    (utc(2026, 7, 15, 7, 0), "Europe/Paris", utc(2026, 7, 16, 7, 0)),    # 09:00 exactly: the next 09:00
    (utc(2026, 3, 28, 12, 0), "Europe/Paris", utc(2026, 3, 29, 7, 0)),   # across the switch to summer time
    (utc(2026, 1, 15, 10, 0), "America/New_York", utc(2026, 1, 15, 14, 0)),
    (utc(2026, 1, 15, 10, 0), "Mars/Olympus", utc(2026, 1, 16, 9, 0)),   # unknown zone: UTC
    (utc(2026, 1, 15, 10, 0), None, utc(2026, 1, 16, 9, 0)),
])
def test_a_wait_until_a_time_of_day_in_the_users_zone(now, zone, due):
    flow = until(until_time="09:00")
    out = begin(flow, now=now, facts=Facts(profile={"timezone": zone, "attributes": {}}))
    assert out.sends == [] and out.node == "a" and out.wake_at == due
    out = wake(flow, out.member, due + 30)
    assert [s.node for s in out.sends] == ["s"] and out.wake_at == due + DAY


def test_a_wait_until_a_time_for_no_such_user_is_in_utc():
    out = begin(until(until_time="09:00"), now=utc(2026, 1, 15, 10, 0), facts=Facts(profile=None))
    assert out.wake_at == utc(2026, 1, 16, 9, 0)


def test_a_wait_until_a_profile_date_with_a_negative_offset():
    flow = until(until_date={"field": "attributes.renewal_at", "offset": "-3_days"})
    now = utc(2026, 6, 1)
    out = begin(flow, now=now, facts=Facts(profile={"attributes": {"renewal_at": "2026-07-01"}}))
    assert out.sends == [] and out.wake_at == utc(2026, 6, 28)
    out = wake(flow, out.member, utc(2026, 6, 28))
    assert [s.node for s in out.sends] == ["s"] and out.wake_at == utc(2026, 6, 29)


def test_a_wait_until_the_signup_date_plus_an_offset():
    flow = until(until_date={"field": "created_at", "offset": "30_days"})
    joined = datetime(2026, 5, 20, tzinfo=timezone.utc)
    out = begin(flow, now=utc(2026, 6, 1), facts=Facts(profile={"created_at": joined, "attributes": {}}))
    assert out.wake_at == utc(2026, 6, 19)


@pytest.mark.parametrize("profile", [{"attributes": {}}, {"attributes": {"renewal_at": "someday"}}, {}, None])
def test_a_missing_date_passes_at_once(profile):
    flow = until(until_date={"field": "attributes.renewal_at", "offset": "-3_days"})
    out = begin(flow, now=utc(2026, 6, 1), facts=Facts(profile=profile))
    assert [s.node for s in out.sends] == ["s"] and out.node == "w" and out.wake_at == utc(2026, 6, 2)


def test_a_date_already_past_passes_at_once_and_the_next_wait_counts_from_arrival():
    flow = until(until_date={"field": "attributes.renewal_at", "offset": "-3_days"})
    now = utc(2026, 6, 1)
    out = begin(flow, now=now, facts=Facts(profile={"attributes": {"renewal_at": "2026-06-02"}}))
    assert [s.node for s in out.sends] == ["s"]  # the reminder, now
    assert out.node == "w" and out.wake_at == now + DAY  # not three days ago + 1 day, i.e. at once


def test_a_wait_on_the_profile_raises_need_facts_without_it():
    for flow in (until(until_time="09:00"), until(until_date={"field": "created_at"})):
        with pytest.raises(NeedFacts) as need:
            begin(flow)
        assert need.value.profile is True
    # reached by a timer: the same
    flow = flow_of(body_of({"id": "a", "type": "wait", "duration": "1_hour", "next": "b"},
                           {"id": "b", "type": "wait", "until_time": "09:00", "next": "done"}))
    m = begin(flow).member
    with pytest.raises(NeedFacts):
        wake(flow, m, T0 + HOUR)
    assert wake(flow, m, T0 + HOUR, Facts(profile={"timezone": "UTC"})).wake_at == T0 + DAY - HOUR


def test_need_facts_leaves_nothing_half_done():
    flow = flow_of(body_of(send("a", "b"), {"id": "b", "type": "wait", "until_time": "09:00", "next": "done"}))
    with pytest.raises(NeedFacts):
        begin(flow)
    out = begin(flow, facts=Facts(profile={"timezone": "Europe/Paris"}))
    assert [s.step for s in out.sends] == [f"a@{int(T0)}"] and out.wake_at == utc(2026, 3, 3, 8, 0)


# ── Admission and re-entry ────────────────────────────────────────────────────


def reentry_flow(live: bool = True, **rule) -> Flow:
    return flow_of(body_of(send("a"), **{"event": "signup", **rule}), live=live)


def left(flow: Flow, now: float = T0, seen: list[str] | None = None) -> list:
    out = begin(flow, now=now, seen=seen if seen is not None else ["e:first"])
    assert out.exit == "exit"
    return out.member


def test_once_lets_a_user_in_once():
    flow = reentry_flow()
    assert admit(flow, None, ["e:1"], T0, NO_FACTS) is None
    assert admit(flow, left(flow), ["e:2"], T0 + 100 * DAY, NO_FACTS) == "entered_before"


def test_every_lets_a_user_in_each_time_with_new_message_steps():
    flow = reentry_flow(reentry="every")
    first = left(flow, seen=["e:1"])
    assert first[K] == 1
    assert admit(flow, first, ["e:2"], T0 + 60, NO_FACTS) is None
    second = begin(flow, prev=first, now=T0 + 60, seen=["e:2"])
    assert [s.step for s in second.sends] == [f"a@{int(T0) + 60}"] and second.member[K] == 2
    assert second.member[ENTERED] == T0 + 60 and second.member[LAST] == T0 + 60
    assert second.member[SEEN] == ["e:1", "e:2"]
    third = begin(flow, prev=second.member, now=T0 + 120, seen=["e:3"])
    assert [s.step for s in third.sends] == [f"a@{int(T0) + 120}"]


def test_window_lets_a_user_in_once_per_window():
    flow = reentry_flow(reentry="window", reentry_window="7_days")
    prev = left(flow)
    assert admit(flow, prev, ["e:2"], T0 + 7 * DAY - 1, NO_FACTS) == "within_window"
    assert admit(flow, prev, ["e:2"], T0 + 7 * DAY, NO_FACTS) is None


def test_a_user_inside_does_not_enter_again():
    flow = flow_of(body_of({"id": "a", "type": "wait", "duration": "1_day", "next": "done"}, event="signup",
                           reentry="every"))
    inside = begin(flow).member
    assert admit(flow, inside, ["e:2"], T0 + HOUR, NO_FACTS) == "inside"


def test_a_retried_event_is_a_duplicate():
    flow = reentry_flow(reentry="every", dedup_key="order_id")
    prev = left(flow, seen=["d:o-1", "e:abc"])
    assert admit(flow, prev, ["d:o-1", "e:def"], T0 + 60, NO_FACTS) == "duplicate"  # same order, new event
    assert admit(flow, prev, ["e:abc"], T0 + 60, NO_FACTS) == "duplicate"  # the same event again
    assert admit(flow, prev, ["d:o-2", "e:ghi"], T0 + 60, NO_FACTS) is None
    once = reentry_flow(dedup_key="order_id")
    assert admit(once, left(once, seen=["d:o-1"]), ["d:o-1"], T0 + 60, NO_FACTS) == "duplicate"


def test_seen_keeps_the_latest_values_without_repeats():
    flow = reentry_flow(reentry="every")
    prev = left(flow, seen=[f"e:{i}" for i in range(SEEN_KEPT)])
    out = begin(flow, prev=prev, now=T0 + 60, seen=["d:x", "e:3"])
    assert out.member[SEEN] == ["e:1", "e:2", "e:4", "e:5", "e:6", "e:7", "d:x", "e:3"]
    assert len(out.member[SEEN]) == SEEN_KEPT


def test_a_stopped_flow_admits_nobody():
    flow = reentry_flow(live=False, reentry="every")
    assert admit(flow, None, ["e:1"], T0, NO_FACTS) == "not_live"
    assert admit(flow, left(reentry_flow(reentry="every")), ["e:1"], T0, NO_FACTS) == "not_live"


def test_an_audience_segment_is_read_from_the_facts():
    flow = reentry_flow(segment_id=7)
    assert admit(flow, None, ["e:1"], T0, Facts(segments={7: True})) is None
    assert admit(flow, None, ["e:1"], T0, Facts(segments={7: False})) == "not_in_segment"
    with pytest.raises(NeedFacts) as need:
        admit(flow, None, ["e:1"], T0, Facts(segments={8: True}))
    assert need.value.segment == 7 and need.value.profile is False
    # the policy refuses first: no segment look-up for a user who may not enter anyway
    assert admit(flow, left(flow), ["e:2"], T0, NO_FACTS) == "entered_before"


def test_a_user_who_finished_an_older_version_enters_the_new_one():
    old = reentry_flow(reentry="every")
    prev = left(old)
    new = flow_of(body_of(send("a"), event="signup", reentry="every"), version=2)
    out = begin(new, prev=prev, now=T0 + 60, seen=["e:2"])
    assert out.member[V] == 2 and out.member[K] == 2


# ── Splits ────────────────────────────────────────────────────────────────────


SPLIT = flow_of(body_of({"id": "a", "type": "split", "branches": [{"percent": 90, "next": "big"},
                                                                   {"percent": 10, "next": "small"}]},
                        send("big"), send("small")))


def branch_of(flow: Flow, uid: int, prev: list | None = None) -> str:
    return start(flow, prev, uid, [], T0, NO_FACTS).sends[0].node


def test_a_split_is_deterministic_per_user():
    for uid in (1, 2, 3, 99, 10**12):
        assert len({branch_of(SPLIT, uid) for _ in range(3)}) == 1


def test_a_split_honours_its_percentages_over_many_users():
    counts = Counter(branch_of(SPLIT, uid) for uid in range(1, 10_001))
    assert 8_800 <= counts["big"] <= 9_200 and counts["big"] + counts["small"] == 10_000
    three = flow_of(body_of({"id": "a", "type": "split", "branches": [
        {"percent": 50, "next": "x"}, {"percent": 30, "next": "y"}, {"percent": 20, "next": "z"}]},
        send("x"), send("y"), send("z")))
    counts = Counter(branch_of(three, uid) for uid in range(1, 10_001))
    assert 4_700 <= counts["x"] <= 5_300 and 2_700 <= counts["y"] <= 3_300 and 1_750 <= counts["z"] <= 2_250


def test_different_flows_split_independently():
    other = flow_of(body_of({"id": "a", "type": "split", "branches": [{"percent": 50, "next": "big"},
                                                                       {"percent": 50, "next": "small"}]},
                            send("big"), send("small")), key="j2")
    same = flow_of(body_of({"id": "a", "type": "split", "branches": [{"percent": 50, "next": "big"},
                                                                      {"percent": 50, "next": "small"}]},
                           send("big"), send("small")), key="j3")
    users = range(1, 2_001)
    agree = sum(branch_of(other, u) == branch_of(same, u) for u in users)
    assert 850 <= agree <= 1_150  # about half: the flows' keys decide, not only the user


# ── Triggered campaigns as flows ──────────────────────────────────────────────


def test_a_campaign_flow_sends_the_whole_campaign_once_then_exits():
    rule = parse_rule({"event": "purchase", "reentry": "every"}, "trigger")
    flow = campaign_flow(55, 3, rule)
    assert flow.key == "c55" and flow.version == 3 and flow.rule is rule and flow.whole_campaign and flow.live
    out = begin(flow, seen=["e:p1"])
    assert out.sends == [SendAction("send", 55, f"send@{int(T0)}", None)]
    assert out.exit == "exit" and out.node is None and out.member[V] == 3
    again = begin(flow, prev=out.member, now=T0 + 60, seen=["e:p2"])
    assert again.sends == [SendAction("send", 55, f"send@{int(T0) + 60}", None)]
    assert admit(campaign_flow(55, 3, rule, live=False), None, ["e:p3"], T0, NO_FACTS) == "not_live"
    assert listens(flow, Event(1, "purchase", T0, {}, "e")) and not listens(flow, Event(1, "view", T0, {}, "e"))


# ── Arguments are never mutated ───────────────────────────────────────────────


def test_the_engine_never_mutates_a_member_with_marks():
    flow = flow_of(spec_body(goal={"event": "purchase", "exit": False}))
    m = begin(flow).member
    m = engage(flow, m, "email", "opened", T0 + 1).member
    m = event(flow, m, "purchase", T0 + 2).member
    frozen = copy.deepcopy(m)
    engage(flow, m, "email", "clicked", T0 + 3)
    engage(flow, m, "push", "opened", T0 + 3)
    wake(flow, m, T0 + DAY)
    wake(flow, m, T0 + 9 * DAY)
    leave(m, "stopped")
    admit(flow, m, ["e:9"], T0, NO_FACTS)
    start(flow, [*m[:NODE], None, *m[NODE + 1:]], UID, ["e:9"], T0 + 9 * DAY, NO_FACTS)
    assert m == frozen
    assert m[MARKS] == {"o": ["email"], "g": 1}


def test_the_engine_module_exports_its_api():
    assert {"admit", "start", "on_wake", "on_event", "on_engagement", "leave", "campaign_flow"} <= set(engine.__all__)


def test_an_open_after_the_timeout_was_due_leaves_the_timeout_to_decide():
    journey = parse_journey({"name": "open within a day", "nodes": [
        {"id": "start", "type": "entry", "event": "signup", "next": "mail"},
        {"id": "mail", "type": "send", "channel": "email", "template_id": 1, "next": "w"},
        {"id": "w", "type": "wait_for_event", "event": "opened", "of": "mail", "timeout": "1_day",
         "next": "thanks", "timeout_next": "nudge"},
        {"id": "thanks", "type": "exit"},
        {"id": "nudge", "type": "send", "channel": "push", "template_id": 2, "next": "done"},
        {"id": "done", "type": "exit"}]})
    E = engine
    flow = E.Flow("j9", 1, journey, {"mail": 1, "nudge": 2})
    entered = E.start(flow, None, 7, ["e:1"], 1000.0, E.Facts(profile=None))
    assert [a.step for a in entered.sends] == ["mail@1000"]
    late = E.on_engagement(flow, entered.member, 7, "mail", "opened", 1000.0 + 2 * 86400, E.Facts(), at=1000.0 + 90000)
    assert late is not None and late.node == "w" and not late.sends  # noted, not moved: the timer decides
    in_time = E.on_engagement(flow, entered.member, 7, "mail", "opened", 1000.0 + 2 * 86400, E.Facts(), at=1000.0 + 60)
    assert in_time is not None and in_time.exit == "exit" and not in_time.sends


def test_an_entry_counts_from_its_event_unless_the_event_is_old_or_ahead():
    """A replayed event enters at the same instant, so its messages are the same messages (step "<node>@<tag>");
    a backfilled one (over an hour old) or one stamped in the future enters now."""
    for at, tag in ((T0 - 30, int(T0) - 30), (T0 - 2 * HOUR, int(T0)), (T0 + 60, int(T0))):
        out = start(SPEC, None, UID, ["e:x"], T0, NO_FACTS, at)
        assert [s.step for s in out.sends] == [f"email@{tag}"] and out.member[ENTERED] == tag + (T0 % 1)
        assert engine.entry_tag(out.member) == tag and engine.step_tag(out.sends[0].step) == tag
    assert engine.step_tag("send") is None and engine.step_tag("a@x") is None


def test_a_reentry_within_the_same_second_gets_a_tag_of_its_own():
    flow = campaign_flow(55, 1, parse_rule({"event": "purchase", "reentry": "every"}, "trigger"))
    first = start(flow, None, UID, ["e:1"], T0, NO_FACTS, T0)
    second = start(flow, first.member, UID, ["e:2"], T0 + 0.3, NO_FACTS, T0 + 0.3)
    third = start(flow, second.member, UID, ["e:3"], T0 + 0.6, NO_FACTS, T0 + 0.6)
    assert [o.sends[0].step for o in (first, second, third)] == [
        f"send@{int(T0)}", f"send@{int(T0) + 1}", f"send@{int(T0) + 2}"]

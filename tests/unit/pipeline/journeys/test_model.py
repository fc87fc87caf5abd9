"""pipeline.journeys.model: journeys and event rules as data; each problem names its path and node."""

from __future__ import annotations

import copy
from datetime import time

import pytest

from pipeline.journeys.model import (
    Branch,
    DefinitionError,
    Entry,
    Send,
    Split,
    Wait,
    WaitForEvent,
    parse_journey,
    parse_rule,
    parse_seconds,
)
from tests.helpers.journey_specs import spec_workflow

DAY = 86_400
TEMPLATES = {1: "email", 2: "push", 3: "sms", 4: "email"}
SEGMENTS = {7: "dynamic", 8: "static"}


def spec_journey() -> dict:
    """The spec's workflow: signup → email → 1 day → opened? → push → 2 days → converted? → sms → exit."""
    return {**spec_workflow(), "description": "the spec's example"}


def journey_with(*nodes: dict, goal: dict | None = None) -> dict:
    """entry → the given nodes (the first one is "a") → exit "done"."""
    body = {"name": "J", "nodes": [{"id": "start", "type": "entry", "event": "signup", "next": "a"}, *nodes,
                                   {"id": "done", "type": "exit"}]}
    if goal is not None:
        body["goal"] = goal
    return body


def problems_of(raw, templates=None, segments=None) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_journey(raw, templates, segments)
    assert caught.value.problems, "a DefinitionError lists its problems"
    for path, reason in caught.value.problems:
        assert path in str(caught.value) and reason in str(caught.value)
    return caught.value.problems


def one_problem(raw, path_prefix: str, node: str | None, templates=None, segments=None) -> tuple[str, str]:
    """The problem under ``path_prefix``; its reason names ``node``."""
    found = [(p, r) for p, r in problems_of(raw, templates, segments) if p.startswith(path_prefix)]
    assert found, problems_of(raw, templates, segments)
    path, reason = found[0]
    if node is not None:
        assert repr(node) in reason, (path, reason)
    return path, reason


def with_node(body: dict, node_id: str, **changes) -> dict:
    body = copy.deepcopy(body)
    body["nodes"] = [{**n, **changes} if n["id"] == node_id else n for n in body["nodes"]]
    return body


def without_key(body: dict, node_id: str, key: str) -> dict:
    body = copy.deepcopy(body)
    for n in body["nodes"]:
        if n["id"] == node_id:
            del n[key]
    return body


# ── The valid spec workflow ───────────────────────────────────────────────────


def test_the_spec_workflow_parses_into_typed_nodes():
    journey = parse_journey(spec_journey(), TEMPLATES, SEGMENTS)
    assert journey.name == "Onboarding"
    assert journey.entry == "start"
    assert list(journey.nodes) == ["start", "email", "wait1", "opened", "push", "wait2", "converted", "sms", "done"]
    assert journey.entry_rule.event == "signup" and journey.entry_rule.topic == "user-events"
    assert journey.entry_rule.reentry == "once"
    assert journey.goal is not None and journey.goal.event == "purchase" and journey.goal_exits is True
    email = journey.nodes["email"]
    assert isinstance(email, Send) and (email.channel, email.template_id, email.next) == ("email", 1, "wait1")
    assert [(s.id, s.channel) for s in journey.sends()] == [("email", "email"), ("push", "push"), ("sms", "sms")]
    wait1, wait2 = journey.nodes["wait1"], journey.nodes["wait2"]
    assert isinstance(wait1, Wait) and wait1.seconds == DAY and wait1.next == "opened"
    assert isinstance(wait2, Wait) and wait2.seconds == 2 * DAY
    opened = journey.nodes["opened"]
    assert isinstance(opened, Branch) and opened.test.kind == "opened" and opened.test.node == "email"
    assert (opened.next, opened.else_) == ("wait2", "push")
    converted = journey.nodes["converted"]
    assert isinstance(converted, Branch) and converted.test.kind == "converted"
    assert journey.nodes["done"].type == "exit"
    assert journey.event_names() == {"signup", "purchase"}


def test_the_spec_workflow_parses_without_catalogues_too():
    assert parse_journey(spec_journey()).entry == "start"


def test_a_goal_that_does_not_exit_is_noted():
    body = spec_journey()
    body["goal"] = {"event": "purchase", "exit": False, "where": [{"field": "amount", "operator": "greater_than",
                                                                   "value": 10}]}
    journey = parse_journey(body)
    assert journey.goal_exits is False and journey.goal is not None and journey.goal.where is not None
    body["goal"] = {"event": "purchase", "exit": "no"}
    assert [p for p, _ in problems_of(body)] == ["goal.exit"]


def test_every_node_kind_parses():
    body = {"name": "All", "goal": {"event": "purchase"}, "nodes": [
        {"id": "start", "type": "entry", "segment_id": 7, "next": "s"},
        {"id": "s", "type": "send", "channel": "email", "template_id": 1, "category": "promotional",
         "variants": [{"id": "A", "weight": 1}, {"id": "B", "weight": 3}], "variables": {"x": 1}, "next": "t"},
        {"id": "t", "type": "wait", "until_time": "09:30", "next": "d"},
        {"id": "d", "type": "wait", "until_date": {"field": "attributes.renewal_at", "offset": "-3_days"},
         "next": "w"},
        {"id": "w", "type": "wait_for_event", "event": "clicked", "of": "s", "timeout": "2_hours", "next": "x",
         "timeout_next": "e"},
        {"id": "e", "type": "wait_for_event", "event": "app_open", "timeout": "1_day", "next": "x",
         "timeout_next": "x", "where": [{"field": "platform", "operator": "in", "value": ["ios", "android"]}]},
        {"id": "x", "type": "condition", "if": {"attribute": {"field": "plan", "operator": "equals",
                                                              "value": "pro"}}, "then": "y", "else": "y"},
        {"id": "y", "type": "condition", "if": {"segment": 7}, "then": "z", "else": "z"},
        {"id": "z", "type": "condition", "if": {"event": "app_open"}, "then": "sp", "else": "sp"},
        {"id": "sp", "type": "split", "branches": [{"percent": 90, "next": "done"}, {"percent": 10, "next": "c"}]},
        {"id": "c", "type": "condition", "if": {"clicked": "s"}, "then": "done", "else": "done"},
        {"id": "done", "type": "exit"},
    ]}
    j = parse_journey(body, TEMPLATES, SEGMENTS)
    assert j.entry_rule.event is None and j.entry_rule.segment_id == 7
    assert j.nodes["s"].variants == (("A", 1.0), ("B", 3.0)) and j.nodes["s"].category == "promotional"
    assert j.nodes["t"].until_time == time(9, 30) and j.nodes["t"].seconds is None
    assert (j.nodes["d"].date_field, j.nodes["d"].offset_s) == ("attributes.renewal_at", -3 * DAY)
    w = j.nodes["w"]
    assert isinstance(w, WaitForEvent) and (w.event, w.of, w.timeout_s, w.timeout_next) == ("clicked", "s", 7200, "e")
    assert j.nodes["e"].where is not None and j.nodes["e"].of is None
    assert j.nodes["x"].test.condition.target.name == "plan"
    assert j.nodes["y"].test.segment_id == 7 and j.nodes["z"].test.event == "app_open"
    assert isinstance(j.nodes["sp"], Split) and j.nodes["sp"].branches == ((90, "done"), (10, "c"))
    assert j.event_names() == {"purchase", "app_open"}  # engagement waits are no user events


def test_a_loop_with_a_wait_on_it_is_accepted():
    body = journey_with(
        {"id": "a", "type": "send", "channel": "email", "template_id": 1, "next": "w"},
        {"id": "w", "type": "wait", "duration": "1_day", "next": "c"},
        {"id": "c", "type": "condition", "if": {"clicked": "a"}, "then": "done", "else": "a"})
    assert set(parse_journey(body, TEMPLATES).nodes) == {"start", "a", "w", "c", "done"}
    body = journey_with(  # a wait for an event waits too
        {"id": "a", "type": "send", "channel": "email", "template_id": 1, "next": "w"},
        {"id": "w", "type": "wait_for_event", "event": "clicked", "of": "a", "timeout": "1_day", "next": "done",
         "timeout_next": "a"})
    assert "w" in parse_journey(body, TEMPLATES).nodes


# ── Invalid graphs: the path is the node's, the reason names it ──────────────


def test_an_unreachable_node_is_named():
    body = spec_journey()
    body["nodes"].append({"id": "orphan", "type": "exit"})
    path, reason = one_problem(body, "nodes.9", "orphan")
    assert path == "nodes.9" and "cannot be reached" in reason


def test_a_loop_without_a_wait_is_refused_naming_its_nodes():
    body = journey_with(
        {"id": "a", "type": "send", "channel": "email", "template_id": 1, "next": "c"},
        {"id": "c", "type": "condition", "if": {"converted": True}, "then": "done", "else": "a"},
        goal={"event": "purchase"})
    problems = problems_of(body)
    assert len(problems) == 1
    path, reason = problems[0]
    assert path in ("nodes.1", "nodes.2") and "loop without a wait" in reason
    assert "'a'" in reason and "'c'" in reason


def test_a_loop_of_a_split_onto_itself_is_refused():
    body = journey_with({"id": "a", "type": "split", "branches": [{"percent": 50, "next": "a"},
                                                                  {"percent": 50, "next": "done"}]})
    path, reason = one_problem(body, "nodes.1", "a")
    assert "loop without a wait" in reason


def test_a_node_leading_back_to_the_entry_is_refused():
    body = journey_with({"id": "a", "type": "wait", "duration": "1_day", "next": "start"})
    path, reason = one_problem(body, "nodes.1", "a")
    assert path == "nodes.1" and "back to the entry" in reason


def test_an_unknown_channel_is_named():
    path, reason = one_problem(with_node(spec_journey(), "email", channel="fax"), "nodes.1.channel", "email")
    assert "fax" in reason


@pytest.mark.parametrize("tid", [None, 0, -1, "1", True])
def test_a_missing_or_malformed_template_is_named(tid):
    body = with_node(spec_journey(), "push", template_id=tid) if tid is not None \
        else without_key(spec_journey(), "push", "template_id")
    one_problem(body, "nodes.4.template_id", "push")


def test_an_unknown_template_is_named():
    path, reason = one_problem(with_node(spec_journey(), "push", template_id=99), "nodes.4.template_id", "push",
                               templates=TEMPLATES)
    assert "no template 99" in reason


def test_a_template_of_another_channel_is_named():
    problems = problems_of(with_node(spec_journey(), "email", template_id=3), templates=TEMPLATES)
    assert problems == [("nodes.1.template_id", "node 'email': template 3 is for sms, not email")]


def test_a_dangling_next_is_named():
    path, reason = one_problem(with_node(spec_journey(), "push", next="nowhere"), "nodes.4", "push")
    assert path == "nodes.4" and "'nowhere'" in reason and "not a node" in reason
    path, reason = one_problem(with_node(spec_journey(), "opened", **{"else": "gone"}), "nodes.3", "opened")
    assert "'gone'" in reason


def test_a_missing_next_is_named():
    one_problem(without_key(spec_journey(), "wait1", "next"), "nodes.2.next", "wait1")
    one_problem(without_key(spec_journey(), "opened", "then"), "nodes.3.then", "opened")


def test_two_entries_are_refused_naming_both():
    body = spec_journey()
    body["nodes"].append({"id": "again", "type": "entry", "event": "login", "next": "email"})
    problems = problems_of(body)
    assert problems == [("nodes", "exactly one node of type 'entry' (found start, again)")]


def test_no_entry_is_refused():
    body = spec_journey()
    body["nodes"] = body["nodes"][1:]
    assert ("nodes", "exactly one node of type 'entry'") in problems_of(body)


def test_duplicate_ids_are_refused_naming_the_id():
    body = spec_journey()
    body["nodes"].append({"id": "sms", "type": "exit"})
    path, reason = one_problem(body, "nodes.9", "sms")
    assert path == "nodes.9.id" and "twice" in reason


@pytest.mark.parametrize("branches, where", [
    ([{"percent": 60, "next": "done"}, {"percent": 30, "next": "done"}], "nodes.1.branches"),
    ([{"percent": 60, "next": "done"}, {"percent": 50, "next": "done"}], "nodes.1.branches"),
    ([{"percent": 100, "next": "done"}], "nodes.1.branches"),
    ([{"percent": 0, "next": "done"}, {"percent": 100, "next": "done"}], "nodes.1.branches.0"),
    ([{"percent": 50.5, "next": "done"}, {"percent": 49.5, "next": "done"}], "nodes.1.branches.0"),
    ([{"percent": 50, "next": "done"}, {"percent": 50}], "nodes.1.branches.1"),
    ("half", "nodes.1.branches"),
])
def test_split_branches_must_add_up_to_100(branches, where):
    path, reason = one_problem(journey_with({"id": "a", "type": "split", "branches": branches}), where, "a")
    if isinstance(branches, list) and len(branches) == 2 and all("next" in b for b in branches) \
            and all(isinstance(b["percent"], int) and b["percent"] > 0 for b in branches):
        assert f"add up to {sum(b['percent'] for b in branches)}, not 100" in reason


def test_a_wait_of_two_kinds_or_none_is_refused():
    path, reason = one_problem(journey_with({"id": "a", "type": "wait", "duration": "1_day", "until_time": "09:00",
                                             "next": "done"}), "nodes.1", "a")
    assert path == "nodes.1" and "exactly one of" in reason
    path, _ = one_problem(journey_with({"id": "a", "type": "wait", "next": "done"}), "nodes.1", "a")
    assert path == "nodes.1"


@pytest.mark.parametrize("wait, path", [
    ({"duration": "1_month"}, "nodes.1.duration"),
    ({"duration": "-1_day"}, "nodes.1.duration"),
    ({"duration": "0_days"}, "nodes.1.duration"),
    ({"duration": 0}, "nodes.1.duration"),
    ({"duration": "one day"}, "nodes.1.duration"),
    ({"until_time": "9:00"}, "nodes.1.until_time"),
    ({"until_time": "24:00"}, "nodes.1.until_time"),
    ({"until_time": 900}, "nodes.1.until_time"),
    ({"until_date": {"field": "renewal_at"}}, "nodes.1.until_date.field"),
    ({"until_date": "attributes.renewal_at"}, "nodes.1.until_date.field"),
    ({"until_date": {"field": "attributes.renewal_at", "offset": "3_months"}}, "nodes.1.until_date.offset"),
])
def test_bad_waits_are_named(wait, path):
    assert one_problem(journey_with({"id": "a", "type": "wait", "next": "done", **wait}), path, "a")[0] == path


def test_wait_durations_in_every_unit_parse():
    for raw, seconds in (("90_seconds", 90), ("1_minute", 60), ("3_hours", 10_800), ("2_weeks", 14 * DAY), (30, 30)):
        j = parse_journey(journey_with({"id": "a", "type": "wait", "duration": raw, "next": "done"}))
        assert j.nodes["a"].seconds == seconds
    j = parse_journey(journey_with({"id": "a", "type": "wait", "until_date": {"field": "created_at"}, "next": "done"}))
    assert (j.nodes["a"].date_field, j.nodes["a"].offset_s) == ("created_at", 0)


def _wait_for(**fields) -> dict:
    return journey_with({"id": "a", "type": "send", "channel": "email", "template_id": 1, "next": "w"},
                        {"id": "w", "type": "wait_for_event", "timeout": "1_day", "next": "done",
                         "timeout_next": "done", **fields})


def test_a_wait_for_opened_needs_of():
    path, reason = one_problem(_wait_for(event="opened"), "nodes.2.of", "w")
    assert path == "nodes.2.of"
    one_problem(_wait_for(event="clicked", of=5), "nodes.2.of", "w")


def test_only_engagement_waits_name_a_send_node():
    one_problem(_wait_for(event="app_open", of="a"), "nodes.2.of", "w")


@pytest.mark.parametrize("of", ["done", "w", "nowhere"])
def test_of_must_name_a_send_node(of):
    path, reason = one_problem(_wait_for(event="opened", of=of), "nodes.2", "w")
    assert path == "nodes.2" and f"{of!r}" in reason and "not a send node" in reason


def test_a_condition_on_the_message_of_a_non_send_node_is_refused():
    body = journey_with({"id": "a", "type": "wait", "duration": "1_day", "next": "c"},
                        {"id": "c", "type": "condition", "if": {"opened": "a"}, "then": "done", "else": "done"})
    path, reason = one_problem(body, "nodes.2", "c")
    assert path == "nodes.2" and "not a send node" in reason


@pytest.mark.parametrize("fields, path", [
    ({"event": "opened", "of": "a", "timeout": "soon"}, "nodes.2.timeout"),
    ({"event": "opened", "of": "a", "timeout": None}, "nodes.2.timeout"),
    ({"event": "opened", "of": "a", "timeout_next": None}, "nodes.2.timeout_next"),
    ({"event": "App Open"}, "nodes.2.event"),
    ({"event": "app_open", "where": [{"field": "platform", "operator": "bigger", "value": 1}]}, "nodes.2.where"),
    ({"event": "app_open", "where": [{"field": "events.purchase", "operator": "exists"}]}, "nodes.2.where"),
    ({"event": "app_open", "colour": "red"}, "nodes.2.colour"),
])
def test_bad_waits_for_events_are_named(fields, path):
    assert one_problem(_wait_for(**fields), path, "w")[0].startswith(path)


def test_a_converted_test_without_a_goal_is_refused():
    body = spec_journey()
    del body["goal"]
    problems = problems_of(body)
    assert problems == [("nodes.6", "node 'converted' tests 'converted', but the journey has no goal")]


@pytest.mark.parametrize("test, path", [
    ({"opened": 3}, "nodes.1.if.opened"),
    ({"converted": "yes"}, "nodes.1.if.converted"),
    ({"segment": 0}, "nodes.1.if.segment"),
    ({"segment": 99}, "nodes.1.if.segment"),
    ({"event": "Not An Event"}, "nodes.1.if.event"),
    ({"attribute": {"field": "plan", "operator": "bigger", "value": 1}}, "nodes.1.if.attribute.operator"),
    ({"attribute": {"field": "events.purchase", "operator": "exists"}}, "nodes.1.if.attribute"),
    ({"weather": "sunny"}, "nodes.1.if"),
    ({"opened": "a", "clicked": "a"}, "nodes.1.if"),
    ("converted", "nodes.1.if"),
])
def test_bad_condition_tests_are_named(test, path):
    body = journey_with({"id": "a", "type": "condition", "if": test, "then": "done", "else": "done"},
                        goal={"event": "purchase"})
    assert one_problem(body, path, "a", segments=SEGMENTS)[0] == path


@pytest.mark.parametrize("variants, path", [
    ([{"id": "A", "weight": 1}], "nodes.1.variants"),
    ([{"id": "A", "weight": 1}, {"id": "A", "weight": 2}], "nodes.1.variants"),
    ([{"id": "A", "weight": 0}, {"id": "B", "weight": 2}], "nodes.1.variants.0"),
    ([{"id": "A"}, {"id": "", "weight": 2}], "nodes.1.variants.1"),
])
def test_bad_variants_are_named(variants, path):
    body = journey_with({"id": "a", "type": "send", "channel": "email", "template_id": 1, "variants": variants,
                         "next": "done"})
    assert one_problem(body, path, "a")[0] == path


def test_unknown_types_fields_and_ids_are_refused():
    one_problem(journey_with({"id": "a", "type": "teleport", "next": "done"}), "nodes.1.type", "a")
    assert [p for p, _ in problems_of(journey_with({"id": "a b", "type": "exit"}))][0] == "nodes.1.id"
    assert "nodes.1" in [p for p, _ in problems_of(journey_with("a"))]
    one_problem(journey_with({"id": "a", "type": "send", "channel": "email", "template_id": 1, "next": "done",
                              "colour": "red"}), "nodes.1.colour", "a")


@pytest.mark.parametrize("raw, path", [
    ([], "definition"),
    ({"name": "J"}, "nodes"),
    ({"name": "J", "nodes": []}, "nodes"),
    ({"name": "", "nodes": spec_journey()["nodes"], "goal": {"event": "purchase"}}, "name"),
    ({**spec_journey(), "surprise": 1}, "surprise"),
    ({**spec_journey(), "goal": {"event": "purchase", "reentry": "every"}}, "goal.reentry"),
    ({**spec_journey(), "goal": {"event": "Purchase!"}}, "goal.event"),
    ({"name": "J", "nodes": [{"id": f"n{i}", "type": "exit"} for i in range(201)]}, "nodes"),
])
def test_malformed_definitions_name_the_field(raw, path):
    assert path in [p for p, _ in problems_of(raw)]


def test_every_problem_is_listed_at_once():
    body = with_node(with_node(spec_journey(), "email", channel="fax"), "push", next="nowhere")
    paths = [p for p, _ in problems_of(body)]
    assert "nodes.1.channel" in paths and "nodes.4" in paths


# ── Segment entries ───────────────────────────────────────────────────────────


def test_a_segment_entry_needs_a_known_dynamic_segment():
    body = with_node(spec_journey(), "start", segment_id=8)
    del body["nodes"][0]["event"]
    path, reason = one_problem(body, "nodes.0.segment_id", "start", segments=SEGMENTS)
    assert "static" in reason
    path, reason = one_problem(with_node(body, "start", segment_id=9), "nodes.0.segment_id", "start",
                               segments=SEGMENTS)
    assert "no segment 9" in reason
    assert parse_journey(with_node(body, "start", segment_id=7), segments=SEGMENTS).entry_rule.segment_id == 7
    # an event entry with an audience segment: any kind of segment
    assert parse_journey(with_node(spec_journey(), "start", segment_id=8), segments=SEGMENTS).entry_rule.event


# ── Entry rules on the entry node: the path is the node's, the reason names it ─


@pytest.mark.parametrize("fields, path", [
    ({"reentry": "window"}, "nodes.0.reentry_window"),
    ({"reentry": "window", "reentry_window": "soon"}, "nodes.0.reentry_window"),
    ({"reentry_window": "7_days"}, "nodes.0.reentry_window"),
    ({"reentry": "sometimes"}, "nodes.0.reentry"),
    ({"dedup_key": "order id"}, "nodes.0.dedup_key"),
    ({"dedup_key": 5}, "nodes.0.dedup_key"),
    ({"limit": 0}, "nodes.0.limit"),
    ({"limit": -3}, "nodes.0.limit"),
    ({"limit": True}, "nodes.0.limit"),
    ({"limit": "10"}, "nodes.0.limit"),
    ({"topic": "no spaces"}, "nodes.0.topic"),
    ({"event": "Sign Up"}, "nodes.0.event"),
    ({"segment_id": 0}, "nodes.0.segment_id"),
    ({"where": [{"field": "plan", "operator": "bigger", "value": 1}]}, "nodes.0.where.conditions.0.operator"),
    ({"where": [{"field": "events.purchase", "operator": "exists"}]}, "nodes.0.where"),
    ({"colour": "red"}, "nodes.0.colour"),
])
def test_bad_entry_rules_are_named(fields, path):
    got, _ = one_problem(with_node(spec_journey(), "start", **fields), path, "start")
    assert got == path


def test_a_good_entry_rule_parses():
    body = with_node(spec_journey(), "start", reentry="window", reentry_window="7_days", dedup_key="order_id",
                     limit=1000, topic="shop.orders",
                     where={"conditions": [{"field": "amount", "operator": "greater_than", "value": 50},
                                           {"field": "plan", "operator": "in", "value": ["pro", "team"]}],
                            "logic": "OR"})
    rule = parse_journey(body).entry_rule
    assert (rule.reentry, rule.window_s, rule.dedup_key, rule.limit, rule.topic) == \
        ("window", 7 * DAY, "order_id", 1000, "shop.orders")
    assert rule.where is not None and rule.where.logic == "OR" and len(rule.where.conditions) == 2


# ── parse_rule (also a triggered campaign's trigger) ──────────────────────────


def rule_problems(raw, *, entry: bool = True) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_rule(raw, "trigger", entry=entry)
    return caught.value.problems


def test_a_rule_parses_with_defaults():
    rule = parse_rule({"event": "purchase"}, "trigger")
    assert (rule.event, rule.topic, rule.where, rule.segment_id, rule.reentry, rule.window_s, rule.dedup_key,
            rule.limit) == ("purchase", "user-events", None, None, "once", None, None, None)
    assert parse_rule({"event": "purchase", "reentry": "every"}, "trigger").reentry == "every"


@pytest.mark.parametrize("raw, path", [
    ({"event": "purchase", "reentry": "window"}, "trigger.reentry_window"),
    ({"event": "purchase", "reentry": "window", "reentry_window": "-1_day"}, "trigger.reentry_window"),
    ({"event": "purchase", "reentry": "once", "reentry_window": "1_day"}, "trigger.reentry_window"),
    ({"event": "purchase", "dedup_key": "order id"}, "trigger.dedup_key"),
    ({"event": "purchase", "dedup_key": "1order"}, "trigger.dedup_key"),
    ({"segment_id": 7, "dedup_key": "order_id"}, "trigger.dedup_key"),
    ({"event": "purchase", "limit": 0}, "trigger.limit"),
    ({"event": "purchase", "limit": 2.5}, "trigger.limit"),
    ({"event": "purchase", "segment_id": True}, "trigger.segment_id"),
    ({}, "trigger.event"),
    ({"event": "purchase", "where": [{"field": "amount", "operator": "bigger", "value": 5}]},
     "trigger.where.conditions.0.operator"),
    ({"event": "purchase", "where": [{"field": "events.x", "operator": "exists"}]}, "trigger.where"),
    ({"event": "purchase", "where": [{"field": "amount", "operator": "between", "value": [9, 1]}]},
     "trigger.where.conditions.0.value"),
    ({"event": "purchase", "where": {"conditions": [], "exclude_segments": [3]}}, "trigger.where.exclude_segments"),
])
def test_bad_rules_name_the_field(raw, path):
    assert path in [p for p, _ in rule_problems(raw)]


def test_a_rule_must_be_an_object():
    assert rule_problems("purchase") == [("trigger", "an object such as {\"event\": \"purchase\"}")]


def test_goals_and_waits_take_no_entry_fields():
    paths = [p for p, _ in rule_problems({"event": "purchase", "reentry": "every", "dedup_key": "order_id",
                                          "limit": 3, "segment_id": 7}, entry=False)]
    assert sorted(paths) == ["trigger.dedup_key", "trigger.limit", "trigger.reentry", "trigger.segment_id"]
    assert [p for p, _ in rule_problems({"segment_id": 7}, entry=False)][-1] == "trigger.event"


def test_a_where_uses_the_dsl_operators_on_event_properties():
    where = [{"field": "amount", "operator": "between", "value": [10, 100]},
             {"field": "sku", "operator": "contains", "value": "SHOE"},
             {"field": "paid_at", "operator": "within_last", "value": "7_days"},
             {"field": "coupon", "operator": "not_exists"},
             {"field": "attributes.store", "operator": "not_in", "value": ["outlet"]}]
    rule = parse_rule({"event": "purchase", "where": where}, "trigger")
    assert [c.operator for c in rule.where.conditions] == ["between", "contains", "within_last", "not_exists",
                                                            "not_in"]
    assert {c.target.source for c in rule.where.conditions} == {"attribute"}


def test_a_where_on_a_property_named_like_a_user_field_reads_the_property():
    """The docstring: bare names are the event's properties, 'country' or 'created_at' as much as 'amount'."""
    rule = parse_rule({"event": "purchase", "where": [{"field": "country", "operator": "equals", "value": "FR"},
                                                      {"field": "created_at", "operator": "exists"}]}, "trigger")
    assert [c.target.name for c in rule.where.conditions] == ["country", "created_at"]
    assert {c.target.source for c in rule.where.conditions} == {"attribute"}
    # as written: a property is no user field ('fr' is not upper-cased, an email property holds an address)
    rule = parse_rule({"event": "purchase", "where": [{"field": "country", "operator": "equals", "value": "fr"},
                                                      {"field": "email", "operator": "equals", "value": "a@b.c"}]},
                      "trigger")
    assert [c.value for c in rule.where.conditions] == ["fr", "a@b.c"]


# ── Durations ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("raw, signed, seconds", [
    ("90_seconds", False, 90), ("1_second", False, 1), ("1_day", False, DAY), ("1_days", False, DAY),
    ("2_weeks", False, 14 * DAY), ("3_hours", False, 10_800), (" 5_minutes ", False, 300), (45, False, 45),
    ("-3_days", True, -3 * DAY), ("3_days", True, 3 * DAY), ("0_days", True, 0), (-60, True, -60), (0, True, 0),
    ("-3_days", False, None), ("0_days", False, None), (0, False, None), (-5, False, None), (True, False, None),
    (1.5, False, None), ("1 day", False, None), ("1_month", False, None), ("day", False, None),
    ("1234567_days", False, None), (None, False, None), ("", True, None), ("+3_days", True, None),
])
def test_parse_seconds(raw, signed, seconds):
    assert parse_seconds(raw, signed=signed) == seconds


def test_entry_and_node_types():
    j = parse_journey(spec_journey())
    assert isinstance(j.nodes["start"], Entry) and j.nodes["start"].next == "email"
    assert not isinstance(j.nodes["done"], (Entry, Send, Wait, WaitForEvent, Branch, Split))


def test_a_journeys_quiet_hours_are_true_false_or_a_local_window():
    from pipeline.journeys.model import DefinitionError, parse_journey
    base = {"name": "q", "nodes": [{"id": "s", "type": "entry", "event": "signup", "next": "e"},
                                   {"id": "e", "type": "exit"}]}
    assert parse_journey({**base, "quiet_hours": True}).quiet_hours is True
    assert parse_journey({**base, "quiet_hours": {"start": "21:30", "end": "08:00"}}).quiet_hours == {
        "start": "21:30", "end": "08:00"}
    assert parse_journey(base).quiet_hours is None
    for bad in ({"start": "9pm", "end": "08:00"}, {"start": "21:00"}, "night", {"start": "21:00", "end": "08:00", "x": 1}):
        with pytest.raises(DefinitionError) as caught:
            parse_journey({**base, "quiet_hours": bad})
        assert [p for p, _ in caught.value.problems] == ["quiet_hours"]

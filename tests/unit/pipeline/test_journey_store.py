"""The pure parts of pipeline.journey_store: what a draft names, step campaigns, progress."""

from __future__ import annotations

from pipeline.journey_store import node_list, progress_view, referenced, step_campaign, step_name
from pipeline.journeys.model import parse_journey

DRAFT = {
    "name": "Welcome",
    "goal": {"event": "purchase"},
    "nodes": [
        {"id": "start", "type": "entry", "segment_id": 4, "next": "mail"},
        {"id": "mail", "type": "send", "channel": "email", "template_id": 11, "variables": {"code": "X"},
         "next": "vip"},
        {"id": "vip", "type": "condition", "if": {"segment": 5}, "then": "sms", "else": "done"},
        {"id": "sms", "type": "send", "channel": "sms", "template_id": 12,
         "variants": [{"id": "A", "weight": 30}, {"id": "B", "weight": 70}], "next": "done"},
        {"id": "done", "type": "exit"},
    ],
}


def test_a_draft_names_its_templates_and_segments():
    assert referenced(DRAFT) == ({11, 12}, {4, 5})


def test_a_malformed_draft_names_what_it_can():
    raw = {"nodes": ["x", {"type": "send", "template_id": True}, {"type": "send", "template_id": 2**63},
                     {"type": "send", "template_id": 3}, {"type": "condition", "if": "segment"}]}
    assert referenced(raw) == ({3}, set())
    assert referenced([1]) == (set(), set())
    assert referenced({"nodes": "start"}) == (set(), set())


def test_each_send_node_becomes_a_campaign_of_its_channel_template_and_variants():
    journey = parse_journey(DRAFT, {11: "email", 12: "sms"}, {4: "dynamic", 5: "static"})
    mail, sms = journey.sends()

    assert step_campaign(journey.name, 3, mail) == {
        "name": "Welcome · v3 · mail", "channels": ["email"], "journey_node": "mail",
        "content": {"email": {"template_id": 11, "variables": {"code": "X"}}}, "ab_test": {}, "schedule": {}}
    assert step_campaign(journey.name, 3, mail, {"start": "22:00", "end": "07:00"})["schedule"] == {
        "quiet_hours": {"start": "22:00", "end": "07:00"}}  # the journey's quiet hours, as the gate reads them
    assert step_campaign(journey.name, 3, sms)["ab_test"] == {
        "enabled": True, "variants": [{"id": "A", "weight": 30.0}, {"id": "B", "weight": 70.0}]}
    assert step_campaign(journey.name, 3, sms)["content"] == {"sms": {"template_id": 12, "variables": {}}}


def test_a_step_name_fits_the_column_whatever_the_journey_is_called():
    name = step_name("x" * 255, 12, "reminder")
    assert len(name) == 255 and name.endswith("… · v12 · reminder")
    assert step_name("Short", 1, "a") == "Short · v1 · a"


def test_nodes_are_listed_in_definition_order():
    assert node_list(DRAFT) == [("start", "entry"), ("mail", "send"), ("vip", "condition"), ("sms", "send"),
                                ("done", "exit")]
    assert node_list({"nodes": [{"type": "exit"}, "x"]}) == []


def test_progress_adds_each_nodes_counts_over_its_versions():
    row = {"journey_id": 9, "status": "live", "live_version": 2}
    flow = {b"entered": b"10", b"at:mail": b"1", b"at:vip": b"2", b"at:old": b"3", b"exited:goal": b"2",
            b"exited:removed": b"1", b"timed_out": b"4", b"converted": b"5"}
    steps = [{"mail": 101, "sms": 102}, {"mail": 201}]
    counters = {101: {b"sent": b"7", b"opened": b"3", b"delivered": b"7"}, 102: {b"suppressed": b"2"},
                201: {b"sent": b"1", b"clicked": b"1"}}

    view = progress_view(row, node_list(DRAFT), flow, steps, counters)

    assert (view["entered"], view["inside"], view["conversions"], view["timed_out"]) == (10, 6, 5, 4)
    assert view["exited"] == {"goal": 2, "exit": 0, "stopped": 0, "removed": 1}
    nodes = {n["id"]: n for n in view["nodes"]}
    assert nodes["mail"] == {"id": "mail", "type": "send", "users": 1, "sent": 8, "suppressed": 0, "opened": 3,
                             "clicked": 1}
    assert nodes["sms"]["suppressed"] == 2 and nodes["vip"] == {"id": "vip", "type": "condition", "users": 2,
                                                                "sent": 0, "suppressed": 0, "opened": 0, "clicked": 0}


def test_progress_without_counters_is_zero():
    view = progress_view({"journey_id": 1, "status": "draft", "live_version": None}, node_list(DRAFT), {}, [], {})
    assert view["entered"] == view["inside"] == 0 and all(n["users"] == n["sent"] == 0 for n in view["nodes"])

"""pipeline.journeys.rules: records as events, and the segment DSL on one event's properties."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from pipeline.journeys.model import parse_rule
from pipeline.journeys.rules import Event, condition_holds, criteria_hold, dedup_value, event_of, matches, moment_of
from pipeline.segments.dsl import parse_criteria

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
READ_AT = 1_780_000_000.0
BIGINT_MAX = 2**63 - 1


def cond(field: str, operator: str, value=None):
    spec = {"field": field, "operator": operator}
    if value is not None:
        spec["value"] = value
    return parse_criteria({"conditions": [spec]}).root.conditions[0]


def holds(field_op_value: tuple, value) -> bool:
    return condition_holds(cond(*field_op_value), value, NOW)


def iso(moment: datetime) -> str:
    return moment.isoformat()


# ── event_of ──────────────────────────────────────────────────────────────────


def test_a_user_events_record_is_an_event():
    record = {"event_id": "7f0c", "user_id": 42, "name": "purchase", "occurred_at": "2026-05-01T10:00:00Z",
              "campaign_id": None, "properties": {"amount": 30, "sku": "A-1"}}
    event = event_of(record, b"42", READ_AT)
    assert event == Event(42, "purchase", datetime(2026, 5, 1, 10, tzinfo=timezone.utc).timestamp(),
                          {"amount": 30, "sku": "A-1"}, "7f0c")


def test_a_flat_record_keyed_by_user_id_is_an_event():
    record = {"event": "order_placed", "order_id": "o-9", "total": 80.5}
    event = event_of(record, b"1234", READ_AT)
    assert isinstance(event, Event)
    assert (event.user_id, event.name, event.at) == (1234, "order_placed", READ_AT)
    assert event.properties == {"order_id": "o-9", "total": 80.5}
    assert len(event.event_id) == 24  # a content hash when the record has no event_id


def test_a_record_user_id_wins_over_the_key_and_digit_strings_are_ids():
    assert event_of({"user_id": 5, "name": "x"}, b"6", READ_AT).user_id == 5
    assert event_of({"user_id": "77", "name": "x"}, None, READ_AT).user_id == 77
    assert event_of({"user_id": BIGINT_MAX, "name": "x"}, None, READ_AT).user_id == BIGINT_MAX


def test_reserved_fields_are_no_properties_of_a_flat_record():
    record = {"user_id": 1, "name": "x", "occurred_at": 1_700_000_000, "event_id": "e", "a": 1, "properties": "no"}
    assert event_of(record, None, READ_AT).properties == {"a": 1}


@pytest.mark.parametrize("occurred_at, at", [
    (1_700_000_000, 1_700_000_000.0),
    (1_700_000_000_500, 1_700_000_000.5),  # milliseconds
    ("2026-05-01T10:00:00+02:00", datetime(2026, 5, 1, 8, tzinfo=timezone.utc).timestamp()),
    ("2026-05-01T10:00:00", datetime(2026, 5, 1, 10, tzinfo=timezone.utc).timestamp()),  # naive: UTC
    ("yesterday", READ_AT),
    (None, READ_AT),
    (True, READ_AT),
])
def test_an_event_happens_when_it_occurred_else_when_it_was_read(occurred_at, at):
    assert event_of({"user_id": 1, "name": "x", "occurred_at": occurred_at}, None, READ_AT).at == at


def test_event_ids_are_stable_and_differ_by_content():
    record = {"user_id": 1, "name": "purchase", "occurred_at": 1_700_000_000, "order_id": "o-1", "total": 5}
    first = event_of(record, None, READ_AT).event_id
    assert event_of(dict(reversed(list(record.items()))), None, READ_AT + 60).event_id == first
    assert event_of({**record, "order_id": "o-2"}, None, READ_AT).event_id != first
    assert event_of({**record, "user_id": 2}, None, READ_AT).event_id != first
    assert event_of({**record, "occurred_at": 1_700_000_001}, None, READ_AT).event_id != first
    assert event_of({**record, "event_id": ""}, None, READ_AT).event_id == first


@pytest.mark.parametrize("record, key", [
    ({"name": "x"}, None),
    ({"name": "x"}, b""),
    ({"name": "x"}, b"not-a-number"),
    ({"name": "x"}, b"\xff\xfe"),
    ({"name": "x"}, b"-5"),
    ({"name": "x"}, b"0"),
    ({"user_id": 0, "name": "x"}, None),
    ({"user_id": -3, "name": "x"}, None),
    ({"user_id": "abc", "name": "x"}, None),
    ({"user_id": "-3", "name": "x"}, None),
    ({"user_id": 1.5, "name": "x"}, None),
    ({"user_id": True, "name": "x"}, None),
    ({"user_id": [1], "name": "x"}, None),
    ({"user_id": BIGINT_MAX + 1, "name": "x"}, None),
])
def test_a_record_without_a_usable_user_id_gives_a_reason(record, key):
    assert event_of(record, key, READ_AT) == "no user_id (a positive integer) in the record or its key"


@pytest.mark.parametrize("record", [{"user_id": 1}, {"user_id": 1, "name": ""}, {"user_id": 1, "event": 7},
                                    {"user_id": 1, "name": None, "event": None}])
def test_a_record_without_a_name_gives_a_reason(record):
    assert event_of(record, None, READ_AT) == "no event name ('name' or 'event')"


@pytest.mark.parametrize("record", [None, [1, 2], "purchase", 42])
def test_a_record_that_is_no_object_gives_a_reason(record):
    assert event_of(record, b"1", READ_AT) == "not a JSON object"


# ── condition_holds: each operator, on one value ──────────────────────────────


@pytest.mark.parametrize("spec, value, expected", [
    # equals / not_equals: text, numbers, flags; a value of another kind does not match
    (("plan", "equals", "pro"), "pro", True),
    (("plan", "equals", "pro"), "Pro", False),
    (("plan", "equals", "pro"), None, False),
    (("amount", "equals", 5), 5, True),
    (("amount", "equals", 5), 5.0, True),
    (("amount", "equals", 5), "5", True),
    (("amount", "equals", 5), "five", False),
    (("amount", "equals", 5), True, False),
    (("sku", "equals", "5"), 5, True),
    (("vip", "equals", True), True, True),
    (("vip", "equals", True), False, False),
    (("vip", "equals", True), "true", False),
    (("vip", "equals", True), 1, False),
    (("vip", "equals", False), False, True),
    (("plan", "not_equals", "pro"), "team", True),
    (("plan", "not_equals", "pro"), "pro", False),
    (("plan", "not_equals", "pro"), None, True),
    (("amount", "not_equals", 5), "five", True),
    # in / not_in
    (("plan", "in", ["pro", "team"]), "team", True),
    (("plan", "in", ["pro", "team"]), "free", False),
    (("plan", "in", ["pro", "team"]), None, False),
    (("size", "in", [1, 2]), 2, True),
    (("size", "in", [1, 2]), "2", True),
    (("size", "in", [1, 2]), 3, False),
    (("size", "in", [1, 2]), "big", False),
    (("plan", "not_in", ["pro", "team"]), "free", True),
    (("plan", "not_in", ["pro", "team"]), "pro", False),
    (("plan", "not_in", ["pro", "team"]), None, True),
    # contains: text only, case-insensitive
    (("sku", "contains", "shoe"), "RED-SHOE-42", True),
    (("sku", "contains", "shoe"), "hat", False),
    (("sku", "contains", "4"), 42, False),
    (("sku", "contains", "shoe"), ["shoe"], False),
    # greater_than / less_than: numbers, numeric text; other kinds do not match
    (("amount", "greater_than", 50), 80, True),
    (("amount", "greater_than", 50), 50, False),
    (("amount", "greater_than", 50), "80.5", True),
    (("amount", "greater_than", 50), "lots", False),
    (("amount", "greater_than", 50), True, False),
    (("amount", "greater_than", 50), None, False),
    (("amount", "greater_than", 50), {"v": 80}, False),
    (("amount", "less_than", 50), 20, True),
    (("amount", "less_than", 50), 50, False),
    (("amount", "less_than", 50), -1, True),
    # between: inclusive
    (("amount", "between", [10, 20]), 10, True),
    (("amount", "between", [10, 20]), 20, True),
    (("amount", "between", [10, 20]), 15.5, True),
    (("amount", "between", [10, 20]), "15", True),
    (("amount", "between", [10, 20]), 25, False),
    (("amount", "between", [10, 20]), 9.99, False),
    (("amount", "between", [10, 20]), "x", False),
    (("amount", "between", [10, 20]), None, False),
    # exists / not_exists: presence of any value, falsy ones included
    (("coupon", "exists"), "SAVE10", True),
    (("coupon", "exists"), "", True),
    (("coupon", "exists"), 0, True),
    (("coupon", "exists"), False, True),
    (("coupon", "exists"), None, False),
    (("coupon", "not_exists"), None, True),
    (("coupon", "not_exists"), 0, False),
])
def test_condition_operators_on_one_value(spec, value, expected):
    assert holds(spec, value) is expected


@pytest.mark.parametrize("spec, value, expected", [
    (("paid_at", "after", "2026-01-01"), "2026-02-01T00:00:00Z", True),
    (("paid_at", "after", "2026-01-01"), "2025-12-31T23:59:59Z", False),
    (("paid_at", "after", "2026-01-01"), datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp(), True),
    (("paid_at", "after", "2026-01-01"), datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp() * 1000, True),
    (("paid_at", "after", "2026-01-01"), datetime(2026, 3, 1), True),  # naive: UTC
    (("paid_at", "after", "2026-01-01"), date(2026, 3, 1), True),
    (("paid_at", "after", "2026-01-01"), "not a date", False),
    (("paid_at", "after", "2026-01-01"), True, False),
    (("paid_at", "after", "2026-01-01"), None, False),
    (("paid_at", "before", "2026-01-01"), "2025-06-01", True),
    (("paid_at", "before", "2026-01-01"), "2026-06-01", False),
    (("paid_at", "before", "3_days_ago"), iso(NOW - timedelta(days=4)), True),
    (("paid_at", "before", "3_days_ago"), iso(NOW - timedelta(days=2)), False),
    (("paid_at", "after", "now"), iso(NOW + timedelta(minutes=1)), True),
    (("paid_at", "greater_than", "2026-01-01"), "2026-01-02", True),
    (("paid_at", "less_than", "2026-01-01"), "2026-01-02", False),
    (("paid_at", "between", ["2026-01-01", "2026-12-31"]), "2026-06-01T08:00:00+02:00", True),
    (("paid_at", "between", ["2026-01-01", "2026-12-31"]), "2027-01-01T00:00:01Z", False),
    (("paid_at", "between", ["2026-01-01", "2026-12-31"]), 42.0, False),  # epoch seconds: 1970
    (("paid_at", "between", ["30_days_ago", "now"]), iso(NOW - timedelta(days=3)), True),
    (("paid_at", "between", ["30_days_ago", "now"]), iso(NOW - timedelta(days=31)), False),
    (("paid_at", "within_last", "7_days"), iso(NOW - timedelta(days=3)), True),
    (("paid_at", "within_last", "7_days"), iso(NOW - timedelta(days=7)), True),
    (("paid_at", "within_last", "7_days"), iso(NOW - timedelta(days=8)), False),
    (("paid_at", "within_last", "7_days"), iso(NOW + timedelta(hours=1)), False),  # the future is not the last 7 days
    (("paid_at", "within_last", "12_hours"), (NOW - timedelta(hours=1)).timestamp(), True),
    (("paid_at", "within_last", "7_days"), "soon", False),
    (("paid_at", "within_last", "7_days"), None, False),
])
def test_date_operators_on_event_properties(spec, value, expected):
    assert holds(spec, value) is expected


def test_a_profile_time_field_compares_as_a_moment():
    joined = cond("created_at", "before", "2026-01-01")
    assert condition_holds(joined, datetime(2025, 5, 1, tzinfo=timezone.utc), NOW)
    assert not condition_holds(joined, datetime(2026, 5, 1, tzinfo=timezone.utc), NOW)
    assert condition_holds(cond("created_at", "equals", "2026-05-01"), "2026-05-01T23:59:00Z", NOW)
    assert not condition_holds(cond("created_at", "equals", "2026-05-01"), "2026-05-02T00:00:00Z", NOW)
    assert condition_holds(cond("created_at", "equals", "today"), iso(NOW.replace(hour=1)), NOW)
    assert condition_holds(cond("created_at", "not_equals", "today"), iso(NOW - timedelta(days=1)), NOW)
    assert not condition_holds(cond("created_at", "equals", "today"), "garbage", NOW)


def test_relative_dates_resolve_against_the_now_given():
    recent = cond("paid_at", "after", "1_day_ago")
    value = iso(NOW - timedelta(hours=2))
    assert condition_holds(recent, value, NOW)
    assert not condition_holds(recent, value, NOW + timedelta(days=1))


def test_moment_of_reads_dates_times_and_epochs():
    assert moment_of("2026-05-01") == datetime(2026, 5, 1, tzinfo=timezone.utc)
    assert moment_of("2026-05-01T10:00:00Z") == datetime(2026, 5, 1, 10, tzinfo=timezone.utc)
    assert moment_of(1_700_000_000) == datetime.fromtimestamp(1_700_000_000, tz=timezone.utc)
    assert moment_of(1_700_000_000_000) == datetime.fromtimestamp(1_700_000_000, tz=timezone.utc)
    assert moment_of(None) is None and moment_of("soon") is None and moment_of(False) is None


# ── matches / criteria_hold ───────────────────────────────────────────────────


def event(name: str = "purchase", **properties) -> Event:
    return Event(42, name, NOW.timestamp(), properties, "e1")


def test_a_rule_without_filters_matches_on_the_name_only():
    rule = parse_rule({"event": "purchase"}, "trigger")
    assert matches(rule, event(amount=1))
    assert matches(rule, event())
    assert not matches(rule, event("purchase_refunded"))
    assert not matches(rule, event("Purchase"))


def test_a_rule_with_where_filters_on_the_properties():
    rule = parse_rule({"event": "purchase", "where": [
        {"field": "amount", "operator": "greater_than", "value": 50},
        {"field": "country", "operator": "in", "value": ["FR", "DE"]}]}, "trigger")
    assert matches(rule, event(amount=80, country="FR"), NOW)
    assert not matches(rule, event(amount=20, country="FR"), NOW)
    assert not matches(rule, event(amount=90, country="US"), NOW)
    assert not matches(rule, event(amount=90), NOW)
    assert not matches(rule, event("view", amount=99, country="DE"), NOW)


def test_a_property_named_like_a_user_field_is_read_as_written():
    rule = parse_rule({"event": "signup", "where": [{"field": "country", "operator": "equals", "value": "fr"},
                                                    {"field": "email", "operator": "contains", "value": "@corp."}]},
                      "trigger")
    assert matches(rule, event("signup", country="fr", email="ann@corp.example"), NOW)
    assert not matches(rule, event("signup", country="FR", email="ann@corp.example"), NOW)


def test_nested_or_groups():
    rule = parse_rule({"event": "purchase", "where": {"logic": "OR", "conditions": [
        {"field": "vip", "operator": "equals", "value": True},
        {"logic": "AND", "conditions": [{"field": "amount", "operator": "between", "value": [100, 500]},
                                        {"field": "coupon", "operator": "not_exists"}]}]}}, "trigger")
    assert matches(rule, event(vip=True), NOW)
    assert matches(rule, event(amount=200), NOW)
    assert not matches(rule, event(amount=200, coupon="X"), NOW)
    assert not matches(rule, event(amount=50, vip=False), NOW)


def test_prefixed_field_names_read_the_bare_property():
    criteria = parse_criteria({"conditions": [{"field": "attributes.plan", "operator": "equals", "value": "pro"},
                                              {"field": "user.tier", "operator": "equals", "value": "gold"}]})
    assert criteria_hold(criteria, {"plan": "pro", "tier": "gold"}, NOW)
    assert not criteria_hold(criteria, {"plan": "pro"}, NOW)


def test_an_empty_filter_holds():
    assert criteria_hold(parse_criteria({"conditions": []}), {}, NOW)


def test_matches_defaults_now_to_the_clock():
    rule = parse_rule({"event": "purchase", "where": [{"field": "paid_at", "operator": "within_last",
                                                       "value": "1_hour"}]}, "trigger")
    assert matches(rule, event(paid_at=datetime.now(timezone.utc).isoformat()))
    assert not matches(rule, event(paid_at="2000-01-01"))


def test_dedup_value_reads_the_key_property():
    rule = parse_rule({"event": "purchase", "dedup_key": "order_id"}, "trigger")
    assert dedup_value(rule, event(order_id=123)) == "123"
    assert dedup_value(rule, event(order_id="o-1")) == "o-1"
    assert dedup_value(rule, event()) is None
    assert dedup_value(parse_rule({"event": "purchase"}, "trigger"), event(order_id=1)) is None

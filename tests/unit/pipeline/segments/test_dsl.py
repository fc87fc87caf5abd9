"""parse_criteria: what it accepts, how it normalizes, and how it names each problem."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.segments import AudienceStore, CriteriaError, parse_criteria, unseen_fields
from pipeline.segments.dsl import FieldRef, Instant
from schemas.records import UserEvent, UserProfile


@pytest.fixture
def store() -> AudienceStore:
    store = AudienceStore()
    store.apply_profiles([UserProfile(user_id=1, attributes={
        "plan": "pro", "lifetime_value": 10.5, "vip": True, "last_purchase_date": "2025-01-01", "tags": ["x"]})])
    store.apply_events([UserEvent(user_id=1, name="product_viewed", occurred_at="2025-01-02T00:00:00Z")])
    return store


def problems(data, catalog=None) -> list[tuple[str, str]]:
    with pytest.raises(CriteriaError) as err:
        parse_criteria(data, catalog)
    return err.value.problems


def test_spec_example_parses_and_round_trips_through_to_json(store):
    data = {
        "conditions": [
            {"field": "user.country", "operator": "equals", "value": "US"},
            {"field": "user.last_purchase_date", "operator": "within_last", "value": "30_days"},
            {"field": "attributes.lifetime_value", "operator": "greater_than", "value": 100},
            {"conditions": [{"field": "events.product_viewed", "operator": "exists", "value": "last_7_days"},
                            {"field": "vip", "operator": "equals", "value": True}], "logic": "or"},
        ],
        "logic": "AND",
        "exclude_segments": [4, 4, 9],
    }
    criteria = parse_criteria(data, store)
    assert criteria.exclude_segments == [4, 9]
    assert criteria.conditions[1].value == timedelta(days=30)
    assert criteria.conditions[3].logic == "OR"
    assert criteria.targets() == {FieldRef("builtin", "country"), FieldRef("attribute", "last_purchase_date"),
                                  FieldRef("attribute", "lifetime_value"), FieldRef("event", "product_viewed"),
                                  FieldRef("attribute", "vip")}
    again = parse_criteria(criteria.to_json(), store)
    assert again == criteria and again.to_json() == criteria.to_json()


def test_defaults_are_and_logic_and_no_exclusions():
    assert parse_criteria({"conditions": []}).to_json() == {"conditions": [], "logic": "AND", "exclude_segments": []}


def test_attribute_no_user_has_yet_is_accepted_and_named_with_its_path(store):
    data = {"conditions": [{"field": "country", "operator": "equals", "value": "US"},
                           {"conditions": [{"field": "total_spent", "operator": "greater_than", "value": 1}]}]}
    criteria = parse_criteria(data, store)
    assert criteria.conditions[1].conditions[0].target == FieldRef("attribute", "total_spent")
    assert criteria.conditions[1].conditions[0].value == 1.0
    assert unseen_fields(criteria, store) == [
        ("criteria.conditions.1.conditions.0.field", "no user has attribute 'total_spent' yet")]


def test_event_no_user_has_had_yet_is_accepted_and_named(store):
    criteria = parse_criteria({"conditions": [{"field": "events.product_viewed", "operator": "exists"},
                                              {"field": "events.signed_up", "operator": "not_exists"}]}, store)
    assert unseen_fields(criteria, store) == [("criteria.conditions.1.field", "no user has had event 'signed_up' yet")]


def test_known_fields_give_no_warnings(store):
    criteria = parse_criteria({"conditions": [{"field": "plan", "operator": "equals", "value": "pro"},
                                              {"field": "country", "operator": "exists"},
                                              {"field": "events.product_viewed", "operator": "exists"}]}, store)
    assert unseen_fields(criteria, store) == []


def test_list_valued_attribute_is_not_segmentable_so_no_user_has_it(store):
    criteria = parse_criteria({"conditions": [{"field": "tags", "operator": "exists"}]}, store)
    assert unseen_fields(criteria, store) == [("criteria.conditions.0.field", "no user has attribute 'tags' yet")]


@pytest.mark.parametrize("condition, path, reason", [
    ({"field": "total_spent", "operator": "resembles", "value": 1}, "operator", "unknown operator"),
    ({"field": "total_spent", "operator": "at_least", "value": {"count": 2}}, "operator", "does not apply"),
    ({"field": "total_spent", "operator": "greater_than", "value": {"amount": 1}}, "value", "must be a number"),
    ({"field": "total_spent", "operator": "between", "value": [1]}, "value", "two values"),
    ({"field": "total_spent", "operator": "within_last", "value": "a while"}, "value", "duration"),
    ({"field": "events.signed_up", "operator": "equals", "value": 1}, "operator", "does not apply"),
    ({"field": "events.signed_up", "operator": "exists", "value": "recently"}, "value", "window"),
])
def test_a_field_no_user_has_yet_still_gets_its_operator_and_value_checked(store, condition, path, reason):
    found = problems({"conditions": [condition]}, store)
    assert found[0][0] == f"criteria.conditions.0.{path}" and reason in found[0][1]


def test_unknown_operator_is_named():
    found = problems({"conditions": [{"field": "country", "operator": "like", "value": "U%"}]})
    assert found[0][0] == "criteria.conditions.0.operator" and "unknown operator 'like'" in found[0][1]


def test_operator_that_does_not_fit_the_field_kind_is_refused(store):
    assert problems({"conditions": [{"field": "plan", "operator": "greater_than", "value": 3}]}, store)[0][0] \
        == "criteria.conditions.0.operator"
    assert problems({"conditions": [{"field": "events.product_viewed", "operator": "equals", "value": 3}]})[0][0] \
        == "criteria.conditions.0.operator"
    assert problems({"conditions": [{"field": "country", "operator": "within_last", "value": "3_days"}]})[0][0] \
        == "criteria.conditions.0.operator"


@pytest.mark.parametrize("condition, reason", [
    ({"field": "lifetime_value", "operator": "between", "value": [1]}, "two values"),
    ({"field": "lifetime_value", "operator": "between", "value": [5, 1]}, "above the high bound"),
    ({"field": "last_purchase_date", "operator": "between", "value": ["7_days_ago", "30_days_ago"]}, "after the high"),
    ({"field": "lifetime_value", "operator": "greater_than", "value": "lots"}, "must be a number"),
    ({"field": "last_purchase_date", "operator": "within_last", "value": "30_fortnights"}, "duration"),
    ({"field": "last_purchase_date", "operator": "within_last", "value": 30}, "duration"),
    ({"field": "last_purchase_date", "operator": "after", "value": "yesterday-ish"}, "must be a date"),
    ({"field": "plan", "operator": "in", "value": []}, "non-empty list"),
    ({"field": "plan", "operator": "in", "value": "pro"}, "non-empty list"),
    ({"field": "plan", "operator": "equals", "value": 3}, "must be text"),
    ({"field": "vip", "operator": "equals", "value": "yes"}, "true or false"),
    ({"field": "plan", "operator": "exists", "value": "pro"}, "takes no value"),
    ({"field": "events.product_viewed", "operator": "exists", "value": "recently"}, "window"),
    ({"field": "events.product_viewed", "operator": "at_least", "value": {"count": 0}}, "at least 1"),
    ({"field": "events.product_viewed", "operator": "at_least", "value": {"times": 2}}, "count"),
    ({"field": "plan", "operator": "contains", "value": ""}, "non-empty"),
])
def test_values_are_checked_against_the_operator_and_field(store, condition, reason):
    found = problems({"conditions": [condition]}, store)
    assert found[0][0].startswith("criteria.conditions.0.value")
    assert reason in found[0][1]


@pytest.mark.parametrize("data, path", [
    ("everyone", "criteria"),
    ({"conditions": "all"}, "criteria.conditions"),
    ({"conditions": [], "logic": "XOR"}, "criteria.logic"),
    ({"conditions": [], "limit": 5}, "criteria.limit"),
    ({"conditions": [{"conditions": []}]}, "criteria.conditions.0.conditions"),
    ({"conditions": [{"conditions": [{"field": "country", "operator": "exists"}], "exclude_segments": [1]}]},
     "criteria.conditions.0.exclude_segments"),
    ({"conditions": [5]}, "criteria.conditions.0"),
    ({"conditions": [{"field": "country", "operator": "exists", "negate": True}]}, "criteria.conditions.0.negate"),
    ({"conditions": [], "exclude_segments": "seg_1"}, "criteria.exclude_segments"),
    ({"conditions": [], "exclude_segments": [1, "x", -2]}, "criteria.exclude_segments.1"),
    ({"conditions": [{"field": "", "operator": "exists"}]}, "criteria.conditions.0.field"),
    ({"conditions": [{"field": "events.Bad Name", "operator": "exists"}]}, "criteria.conditions.0.field"),
])
def test_structure_problems_name_their_path(data, path):
    assert problems(data)[0][0] == path


def test_every_problem_is_reported_at_once():
    found = problems({"conditions": [{"field": "country", "operator": "nope"}, {"field": "x y", "operator": "exists"}],
                      "logic": "maybe"})
    assert [p for p, _ in found] == ["criteria.logic", "criteria.conditions.0.operator", "criteria.conditions.1.field"]


def test_nesting_depth_and_size_are_bounded():
    deep: dict = {"field": "country", "operator": "exists"}
    for _ in range(10):
        deep = {"conditions": [deep]}
    assert any("nest at most" in reason for _, reason in problems(deep))
    many = {"conditions": [{"field": "country", "operator": "exists"}] * 201}
    assert problems(many)[0][0] == "criteria.conditions.200"


def test_without_a_catalog_any_attribute_name_is_accepted_and_typed_later():
    criteria = parse_criteria({"conditions": [{"field": "loyalty_tier", "operator": "equals", "value": "gold"},
                                              {"field": "signup_date", "operator": "after", "value": "2024-01-01"}]})
    assert criteria.conditions[1].value == Instant(at=criteria.conditions[1].value.at, whole_day=True)


def test_relative_and_absolute_dates_are_kept_unresolved():
    criteria = parse_criteria({"conditions": [
        {"field": "created_at", "operator": "after", "value": "2_weeks_ago"},
        {"field": "created_at", "operator": "before", "value": "2024-05-01T10:00:00+02:00"},
    ]})
    assert criteria.conditions[0].value == Instant(seconds_ago=14 * 86_400, whole_day=True)
    assert criteria.conditions[1].value.at.utcoffset() == timedelta(hours=2)

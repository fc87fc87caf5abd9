"""The DSL's meaning at its edges, stated one behaviour per test."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from pipeline.segments import AudienceStore, CriteriaError, parse_criteria
from schemas.records import UserEvent, UserProfile

NOW = datetime(2025, 1, 10, 12, 0, tzinfo=timezone.utc)


def store_of(*profiles: UserProfile, events: tuple[UserEvent, ...] = ()) -> AudienceStore:
    store = AudienceStore()
    store.apply_profiles(profiles)
    store.apply_events(events)
    return store


def who(store: AudienceStore, *conditions: dict, logic: str = "AND", exclude=None, exclusions=None) -> list[int]:
    data = {"conditions": list(conditions), "logic": logic}
    if exclude:
        data["exclude_segments"] = exclude
    criteria = parse_criteria(data, store)
    members = store.members(criteria, exclusions or {}, now=NOW).tolist()
    assert store.estimate(criteria, exclusions or {}, now=NOW) == len(members)
    return members


def cond(field: str, operator: str, value=None) -> dict:
    return {"field": field, "operator": operator, **({"value": value} if value is not None else {})}


def profile(uid: int, **kw) -> UserProfile:
    return UserProfile(user_id=uid, updated_at=kw.pop("updated_at", NOW - timedelta(days=1)), **kw)


@pytest.fixture
def dated() -> AudienceStore:
    return store_of(
        profile(1, created_at=NOW - timedelta(days=7)),
        profile(2, created_at=NOW - timedelta(days=7, seconds=1)),
        profile(3, created_at=NOW + timedelta(hours=1)),
        profile(4),
    )


def test_after_and_before_are_strict_and_skip_users_without_a_date(dated):
    assert who(dated, cond("created_at", "after", "7_days_ago")) == [3]
    assert who(dated, cond("created_at", "before", "7_days_ago")) == [2]
    assert who(dated, cond("created_at", "greater_than", "7_days_ago")) == [3]
    assert who(dated, cond("user.created_at", "less_than", "now")) == [1, 2]


def test_within_last_spans_the_cutoff_to_now_inclusive(dated):
    assert who(dated, cond("created_at", "within_last", "7_days")) == [1]
    assert who(dated, cond("created_at", "within_last", "1_week")) == [1]


def test_between_dates_is_inclusive_and_equals_a_date_means_that_utc_day(dated):
    assert who(dated, cond("created_at", "between", ["7_days_ago", "now"])) == [1]
    assert who(dated, cond("created_at", "equals", (NOW - timedelta(days=7)).date().isoformat())) == [1, 2]
    assert who(dated, cond("created_at", "equals", "7_days_ago")) == [1, 2]
    assert who(dated, cond("created_at", "equals", "today")) == [3]


def test_not_equals_and_not_in_are_complements_that_include_users_without_a_value():
    store = store_of(profile(1, attributes={"plan": "pro"}), profile(2, attributes={"plan": "free"}), profile(3))
    assert who(store, cond("plan", "not_equals", "pro")) == [2, 3]
    assert who(store, cond("plan", "not_in", ["pro", "free"])) == [3]
    assert who(store, cond("plan", "equals", "basic")) == []
    assert who(store, cond("plan", "not_equals", "basic")) == [1, 2, 3]


def test_contains_is_case_insensitive_substring():
    store = store_of(profile(1, attributes={"city": "San Francisco"}), profile(2, attributes={"city": "Paris"}))
    assert who(store, cond("city", "contains", "fran")) == [1]


def test_numbers_exclude_users_without_a_value_from_every_comparison():
    store = store_of(profile(1, attributes={"ltv": 50}), profile(2, attributes={"ltv": 150.5}), profile(3))
    assert who(store, cond("ltv", "greater_than", 10)) == [1, 2]
    assert who(store, cond("ltv", "less_than", 100)) == [1]
    assert who(store, cond("ltv", "between", [50, 150.5])) == [1, 2]
    assert who(store, cond("ltv", "in", [150.5, 7])) == [2]
    assert who(store, cond("ltv", "not_exists")) == [3]


def test_country_matches_whatever_the_case_of_the_value():
    store = store_of(profile(1, country="us"), profile(2, country="DE"))
    assert who(store, cond("country", "equals", "us")) == [1]
    assert who(store, cond("user.country", "in", ["de", "FR"])) == [2]


def test_reachability_fields_say_whether_the_user_has_that_channel():
    store = store_of(profile(1, email="a@b.co", push_tokens=["t"]), profile(2, phone="+15550100000"))
    assert who(store, cond("email", "exists")) == [1]
    assert who(store, cond("phone", "exists")) == [2]
    assert who(store, cond("push", "equals", False)) == [2]


def test_event_windows_counts_and_absence():
    events = (
        UserEvent(user_id=1, name="product_viewed", occurred_at=NOW - timedelta(days=7)),
        UserEvent(user_id=2, name="product_viewed", occurred_at=NOW - timedelta(days=8)),
        UserEvent(user_id=2, name="product_viewed", occurred_at=NOW - timedelta(days=9)),
    )
    store = store_of(profile(1), profile(2), profile(3), events=events)
    assert who(store, cond("events.product_viewed", "exists", "last_7_days")) == [1]
    assert who(store, cond("events.product_viewed", "not_exists", "last_7_days")) == [2, 3]
    assert who(store, cond("events.product_viewed", "exists")) == [1, 2]
    assert who(store, cond("events.product_viewed", "at_least", {"count": 2})) == [2]
    assert who(store, cond("events.product_viewed", "at_least", 1)) == [1, 2]


def test_nested_groups_combine_and_with_or():
    store = store_of(
        profile(1, country="US", attributes={"plan": "pro"}), profile(2, country="DE", attributes={"plan": "pro"}),
        profile(3, country="US", attributes={"plan": "free"}), profile(4, country="FR", attributes={"plan": "free"}),
    )
    either = {"conditions": [cond("country", "equals", "US"), cond("country", "equals", "DE")], "logic": "OR"}
    assert who(store, either, cond("plan", "equals", "pro")) == [1, 2]
    assert who(store, either, cond("plan", "equals", "pro"), logic="OR") == [1, 2, 3]


def test_empty_criteria_select_everyone_but_the_excluded():
    store = store_of(profile(1), profile(2), profile(3))
    assert who(store) == [1, 2, 3]
    assert who(store, exclude=[9], exclusions={9: np.array([2, 77], dtype=np.int64)}) == [1, 3]


def test_exclusions_subtract_dynamic_segments_transitively_and_static_member_lists():
    store = store_of(*(profile(i, country="US" if i % 2 else "DE") for i in range(1, 7)))
    germans = parse_criteria({"conditions": [cond("country", "equals", "DE")], "exclude_segments": [3]})
    exclusions = {2: germans, 3: np.array([6], dtype=np.int64), 4: np.array([1], dtype=np.int64)}
    # Everyone minus (Germans minus user 6) minus user 1.
    assert who(store, exclude=[2, 4], exclusions=exclusions) == [3, 5, 6]


def test_an_unresolved_or_cyclic_exclusion_is_an_error_naming_it():
    store = store_of(profile(1))
    loop = parse_criteria({"conditions": [], "exclude_segments": [5]})
    with pytest.raises(CriteriaError) as err:
        store.estimate(parse_criteria({"exclude_segments": [5]}), {5: loop})
    assert err.value.problems[0][0] == "criteria.exclude_segments.0.exclude_segments.0"
    with pytest.raises(CriteriaError) as err:
        store.estimate(parse_criteria({"exclude_segments": [8]}), {})
    assert err.value.problems == [("criteria.exclude_segments.0", "segment 8 was not resolved")]


def test_relative_dates_move_with_now():
    store = store_of(profile(1, attributes={"last_purchase_date": "2025-01-01"}))
    criteria = parse_criteria({"conditions": [cond("last_purchase_date", "within_last", "30_days")]})
    assert store.estimate(criteria, now=datetime(2025, 1, 20, tzinfo=timezone.utc)) == 1
    assert store.estimate(criteria, now=datetime(2025, 3, 1, tzinfo=timezone.utc)) == 0


def test_an_attribute_no_user_has_yet_matches_nobody_until_it_arrives():
    store = store_of(profile(1, attributes={"plan": "pro"}), profile(2))
    data = {"conditions": [cond("total_purchases", "greater_than", 1)]}
    criteria = parse_criteria(data, store)
    assert store.members(criteria, now=NOW).tolist() == []
    assert who(store, cond("total_purchases", "not_exists")) == [1, 2]
    store.apply_profiles([profile(2, attributes={"total_purchases": 3}, updated_at=NOW)])
    assert store.members(criteria, now=NOW).tolist() == [2]


def test_an_event_no_user_has_had_yet_matches_nobody_and_its_absence_everybody():
    store = store_of(profile(1), profile(2))
    assert who(store, cond("events.product_purchased", "exists", "last_7_days")) == []
    assert who(store, cond("events.product_purchased", "not_exists", "last_7_days")) == [1, 2]

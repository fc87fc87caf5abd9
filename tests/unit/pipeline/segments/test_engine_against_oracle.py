"""Every operator of the DSL, nested groups and exclusions, checked against a
brute-force Python oracle on random profiles and events applied in random batches."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.segments import AudienceStore, parse_criteria
from pipeline.segments.snapshot import read_snapshot, write_snapshot
from schemas.records import UserEvent, UserProfile
from tests.helpers.segments_oracle import Oracle

NOW = datetime(2025, 1, 10, 12, 0, tzinfo=timezone.utc)
IDS = [1, 2, 3, 5, 8, 13, 10**12 + 7, 10**12 + 3, 42, 21]
PLANS = ["free", "pro", "Pro Max", "basic"]
DAYS = [-1, 0, 1, 2, 6, 7, 8, 29, 30, 31, 200]  # -1: in the future


def at(days: int, hours: int = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def date_text(days: int) -> str:
    return (NOW - timedelta(days=days)).date().isoformat()


attributes = st.fixed_dictionaries({}, optional={
    "plan": st.sampled_from(PLANS + [None]),
    "ltv": st.one_of(st.none(), st.sampled_from([0, 10, 99.5, 100, 250, 1000])),
    "vip": st.one_of(st.none(), st.booleans()),
    "last_purchase_date": st.one_of(st.none(), st.sampled_from(DAYS).map(date_text)),
})

profiles = st.builds(
    lambda uid, country, email, push, created, attrs, updated: UserProfile(
        user_id=uid, country=country, email="a@b.co" if email else None,
        push_tokens=["tok"] if push else [], created_at=at(created) if created is not None else None,
        attributes=attrs, updated_at=at(updated)),
    st.sampled_from(IDS), st.sampled_from(["US", "DE", "fr", None]), st.booleans(), st.booleans(),
    st.one_of(st.none(), st.sampled_from(DAYS)), attributes, st.integers(0, 5),
)
events = st.builds(
    lambda uid, name, days, hours: UserEvent(user_id=uid, name=name, occurred_at=at(days, hours)),
    st.sampled_from(IDS), st.sampled_from(["purchase", "product_viewed"]), st.sampled_from(DAYS),
    st.sampled_from([0, 1, 12]),
)

window = st.sampled_from(["7_days", "last_7_days", "30_days", "12_hours", "1_week"])
relative = st.sampled_from(["7_days_ago", "30_days_ago", "today", "now", date_text(30), date_text(7)])

time_conditions = st.one_of(
    st.builds(lambda f, v: {"field": f, "operator": "within_last", "value": v},
              st.sampled_from(["created_at", "user.last_purchase_date"]), window),
    st.builds(lambda f, op, v: {"field": f, "operator": op, "value": v},
              st.sampled_from(["created_at", "last_purchase_date"]),
              st.sampled_from(["before", "after", "greater_than", "less_than", "equals", "not_equals"]), relative),
    st.builds(lambda v: {"field": "last_purchase_date", "operator": "between", "value": v},
              st.sampled_from([["30_days_ago", "7_days_ago"], [date_text(31), date_text(1)]])),
)

conditions = st.one_of(
    st.builds(lambda f, v: {"field": f, "operator": "equals", "value": v},
              st.sampled_from(["country", "user.country"]), st.sampled_from(["US", "de", "FR", "IT"])),
    st.builds(lambda op, v: {"field": "plan", "operator": op, "value": v},
              st.sampled_from(["equals", "not_equals", "contains"]), st.sampled_from(["pro", "Pro", "free", "x"])),
    st.builds(lambda op, v: {"field": "attributes.plan", "operator": op, "value": v},
              st.sampled_from(["in", "not_in"]), st.lists(st.sampled_from(PLANS + ["zzz"]), min_size=1, max_size=3)),
    st.builds(lambda op, v: {"field": "ltv", "operator": op, "value": v},
              st.sampled_from(["equals", "not_equals", "greater_than", "less_than"]),
              st.sampled_from([0, 10, 99.5, 100, 500])),
    st.builds(lambda a, b: {"field": "ltv", "operator": "between", "value": [min(a, b), max(a, b)]},
              st.sampled_from([0, 10, 100, 1000]), st.sampled_from([0, 99.5, 250, 2000])),
    st.builds(lambda op, v: {"field": "vip", "operator": op, "value": v},
              st.sampled_from(["equals", "not_equals"]), st.booleans()),
    st.builds(lambda f, op: {"field": f, "operator": op},
              st.sampled_from(["vip", "ltv", "plan", "email", "push", "phone", "created_at", "last_purchase_date"]),
              st.sampled_from(["exists", "not_exists"])),
    time_conditions,
    st.builds(lambda f, op, v: {"field": f, "operator": op, "value": v},
              st.sampled_from(["events.purchase", "events.product_viewed"]),
              st.sampled_from(["exists", "not_exists"]), st.one_of(st.none(), window)),
    st.builds(lambda f, n: {"field": f, "operator": "at_least", "value": {"count": n}},
              st.sampled_from(["events.purchase", "events.product_viewed"]), st.integers(1, 3)),
    st.builds(lambda b: {"field": "email", "operator": "equals", "value": b}, st.booleans()),
)

groups = st.recursive(
    conditions,
    lambda inner: st.builds(lambda cs, logic: {"conditions": cs, "logic": logic},
                            st.lists(inner, min_size=1, max_size=3), st.sampled_from(["AND", "OR"])),
    max_leaves=6,
)
criteria_json = st.builds(lambda cs, logic: {"conditions": cs, "logic": logic},
                          st.lists(groups, min_size=0, max_size=2), st.sampled_from(["AND", "OR"]))

records = st.lists(st.one_of(profiles, events), min_size=5, max_size=60)


def build(recs, cuts: list[int]) -> tuple[AudienceStore, Oracle]:
    """The store fed in batches split at ``cuts``; the oracle fed one record at a time."""
    store, oracle = AudienceStore(), Oracle()
    bounds = sorted({0, len(recs), *(c % (len(recs) + 1) for c in cuts)})
    for lo, hi in zip(bounds, bounds[1:]):
        batch = recs[lo:hi]
        store.apply_profiles([r for r in batch if isinstance(r, UserProfile)])
        store.apply_events([r for r in batch if isinstance(r, UserEvent)])
    for record in _profiles_first(recs, bounds):
        oracle.apply(record)
    return store, oracle


def _profiles_first(recs, bounds):
    """The order the store applies: per batch, profiles then events (events only add, so this is exact)."""
    for lo, hi in zip(bounds, bounds[1:]):
        batch = recs[lo:hi]
        yield from (r for r in batch if isinstance(r, UserProfile))
        yield from (r for r in batch if isinstance(r, UserEvent))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.lists(st.integers(0, 60), max_size=4), conditions)
def test_each_operator_agrees_with_brute_force_oracle(recs, cuts, condition):
    store, oracle = build(recs, cuts)
    criteria = parse_criteria({"conditions": [condition]})
    expected = oracle.members(criteria, {}, NOW)
    assert store.members(criteria, now=NOW).tolist() == expected
    assert store.estimate(criteria, now=NOW) == len(expected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, time_conditions)
def test_time_operators_agree_with_brute_force_oracle(recs, condition):
    store, oracle = build(recs, [])
    criteria = parse_criteria({"conditions": [condition]})
    assert store.members(criteria, now=NOW).tolist() == oracle.members(criteria, {}, NOW)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.lists(st.integers(0, 60), max_size=4), criteria_json, criteria_json,
       st.lists(st.sampled_from(IDS), max_size=4), st.booleans())
def test_engine_agrees_with_brute_force_oracle(recs, cuts, data, excluded_data, static_ids, compact):
    store, oracle = build(recs, cuts)
    if compact:
        store.compact()
    criteria = parse_criteria({**data, "exclude_segments": [1, 2]})
    exclusions = {1: parse_criteria(excluded_data), 2: np.array(sorted(set(static_ids)), dtype=np.int64)}
    expected = oracle.members(criteria, exclusions, NOW)
    assert store.members(criteria, exclusions, now=NOW).tolist() == expected
    assert store.estimate(criteria, exclusions, now=NOW) == len(expected)
    assert store.user_count() == len(oracle.users)


@settings(max_examples=40, deadline=None)
@given(records, criteria_json)
def test_snapshot_round_trip_keeps_every_answer(tmp_path_factory, recs, data):
    store, _ = build(recs, [])
    store.offsets = {"user-profiles": {0: 12, 3: 7}}
    path = write_snapshot(store, tmp_path_factory.mktemp("snap"))
    restored = read_snapshot(path)
    criteria = parse_criteria(data)
    assert restored.members(criteria, now=NOW).tolist() == store.members(criteria, now=NOW).tolist()
    assert restored.frame().equals(store.frame())
    assert restored.offsets == store.offsets
    assert restored.attributes == store.attributes and restored.events == store.events

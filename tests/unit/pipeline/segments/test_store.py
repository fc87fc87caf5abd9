"""AudienceStore bookkeeping: newest profile wins, aggregates, row order, frame shape."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.segments import AudienceStore, parse_criteria
from pipeline.segments import store as store_module
from schemas.records import UserEvent, UserProfile

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def profile(uid: int, minutes: int = 0, **kw) -> UserProfile:
    return UserProfile(user_id=uid, updated_at=T0 + timedelta(minutes=minutes), **kw)


def event(uid: int, name: str, days: float) -> UserEvent:
    return UserEvent(user_id=uid, name=name, occurred_at=T0 + timedelta(days=days))


def count(store: AudienceStore, **condition) -> int:
    return store.estimate(parse_criteria({"conditions": [condition]}), now=T0 + timedelta(days=30))


def test_newest_profile_wins_whatever_the_arrival_order():
    store = AudienceStore()
    store.apply_profiles([profile(1, 10, country="DE")])
    store.apply_profiles([profile(1, 5, country="FR")])  # older: ignored
    assert count(store, field="country", operator="equals", value="DE") == 1
    store.apply_profiles([profile(1, 20, country="FR"), profile(1, 15, country="IT")])  # same batch
    assert store.frame()["country"].to_list() == ["FR"]


def test_a_profile_replaces_the_whole_state_including_attributes_it_no_longer_has():
    store = AudienceStore()
    store.apply_profiles([profile(1, 0, email="a@b.co", attributes={"plan": "pro", "vip": True})])
    store.apply_profiles([profile(1, 1, attributes={"plan": "free"})])
    row = store.frame().row(0, named=True)
    assert row["attr.plan"] == "free" and row["attr.vip"] is None and row["has_email"] is False


def test_events_fold_into_count_first_and_last_per_name_across_batches():
    store = AudienceStore()
    store.apply_events([event(7, "purchase", 3), event(7, "purchase", 1), event(8, "purchase", 2)])
    store.apply_events([event(7, "purchase", 5), event(7, "app_open", 0)])
    frame = store.frame().sort("user_id")
    assert frame["event.purchase.count"].to_list() == [3, 1]
    assert frame["event.purchase.first"].to_list() == [T0 + timedelta(days=1), T0 + timedelta(days=2)]
    assert frame["event.purchase.last"].to_list() == [T0 + timedelta(days=5), T0 + timedelta(days=2)]
    assert frame["event.app_open.count"].to_list() == [1, 0]
    assert store.updated_at == T0 + timedelta(days=5)


def test_users_known_only_by_events_have_null_profile_fields_until_their_profile_arrives():
    store = AudienceStore()
    store.apply_events([event(5, "app_open", 1)])
    assert store.frame()["country"].to_list() == [None]
    store.apply_profiles([profile(5, country="SE")])
    assert store.frame()["country"].to_list() == ["SE"] and store.user_count() == 1


def test_frame_has_the_documented_columns_and_types():
    store = AudienceStore()
    store.apply_profiles([profile(1, email="a@b.co", created_at=T0, attributes={
        "plan": "pro", "lifetime_value": 3, "last_purchase_date": "2024-12-01", "vip": False})])
    store.apply_events([event(1, "purchase", 1)])
    schema = store.frame().schema
    utc = pl.Datetime("us", "UTC")
    assert dict(schema) == dict(pl.Schema({
        "user_id": pl.Int64, "country": pl.Categorical(), "language": pl.Categorical(), "timezone": pl.Categorical(),
        "has_email": pl.Boolean, "has_phone": pl.Boolean, "has_push": pl.Boolean, "created_at": utc,
        "attr.plan": pl.Categorical(), "attr.lifetime_value": pl.Float64, "attr.last_purchase_date": utc,
        "attr.vip": pl.Boolean, "event.purchase.count": pl.UInt32, "event.purchase.first": utc,
        "event.purchase.last": utc,
    }))


def test_out_of_order_ids_are_found_and_members_stay_sorted(monkeypatch):
    monkeypatch.setattr(store_module, "_TAIL_MIN", 4)
    store = AudienceStore()
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(1, 400)) * 1000 + 10**12
    for chunk in np.array_split(ids, 37):
        store.apply_profiles([profile(int(i), country="US") for i in chunk])
    assert store.user_count() == len(ids)
    assert store.members(parse_criteria({"conditions": []})).tolist() == sorted(ids.tolist())
    np.testing.assert_array_equal(store.rows_of(np.sort(ids)) >= 0, True)
    assert store.rows_of(np.array([5, 10**12 + 1]))[0] == -1


def test_growing_keeps_earlier_rows_and_new_columns_start_null():
    store = AudienceStore()
    store.apply_profiles([profile(i, attributes={"a": 1}) for i in range(1, 3000)])
    store.apply_profiles([profile(5000, 1, attributes={"b": "x"})])
    frame = store.frame().sort("user_id")
    assert frame["attr.a"].null_count() == 1 and frame["attr.b"].null_count() == 2999


def test_text_dictionary_widens_past_int16():
    store = AudienceStore()
    store.apply_profiles([profile(i, attributes={"code": f"c{i}"}) for i in range(1, 33_000)])
    assert count(store, field="code", operator="equals", value="c32999") == 1
    assert count(store, field="code", operator="equals", value="c7") == 1


@pytest.mark.parametrize("value, kind", [(True, "flag"), (3, "number"), (2.5, "number"), ("pro", "text"),
                                         ("2024-05-01", "time"), ("2024-05-01T10:00:00Z", "time")])
def test_attribute_kind_comes_from_the_first_value_seen(value, kind):
    store = AudienceStore()
    store.apply_profiles([profile(1, attributes={"a": None}), profile(2, attributes={"a": value})])
    assert store.attribute_kind("a") == kind


def test_a_value_of_another_kind_is_stored_as_null():
    store = AudienceStore()
    store.apply_profiles([profile(1, attributes={"age": 30}), profile(2, attributes={"age": "thirty"})])
    assert store.frame().sort("user_id")["attr.age"].to_list() == [30.0, None]


@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=3000, unique=True),
       st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=300), st.sampled_from([2, 4, 256]))
@settings(max_examples=200, deadline=None)
def test_two_level_search_finds_what_searchsorted_finds(keys, extra, block):
    keys_array = np.array(sorted(keys), dtype=np.int64)
    rng = np.random.default_rng(len(keys))
    needles = np.concatenate([np.array(extra, dtype=np.int64), rng.choice(keys_array, 50)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_TWO_LEVEL_NEEDLES", 1)
        patch.setattr(store_module, "_TWO_LEVEL_KEYS", 1)
        patch.setattr(store_module, "_BLOCK", block)
        found = AudienceStore()._search(keys_array, needles)
    np.testing.assert_array_equal(found, np.searchsorted(keys_array, needles))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=80, unique=True),
       st.lists(st.integers(1, 5000), max_size=40), st.integers(0, 3))
def test_removing_users_leaves_exactly_the_others_with_their_own_values(ids, removed, split):
    """Erasure (pipeline/erase.py): whatever the row order (sorted part and unsorted tail), the removed users
    are gone from every column and every other user keeps their own values."""
    store = AudienceStore()
    cut = len(ids) * split // 4
    store.apply_profiles([profile(u, country=("DE", "FR", "NZ")[u % 3], attributes={"n": u}) for u in ids[:cut]])
    store.apply_profiles([profile(u, country=("DE", "FR", "NZ")[u % 3], attributes={"n": u}) for u in ids[cut:]])
    store.apply_events([event(u, "buy", 1) for u in ids if u % 2])
    gone = set(removed) & set(ids)
    assert store.remove_users(removed) == len(gone)
    kept = sorted(set(ids) - gone)
    frame = store.frame().sort("user_id")
    assert frame["user_id"].to_list() == kept
    assert frame["country"].to_list() == [("DE", "FR", "NZ")[u % 3] for u in kept]
    assert frame["attr.n"].to_list() == [float(u) for u in kept]
    assert store.user_count() == len(kept)
    assert (store.rows_of(np.array(sorted(gone), dtype=np.int64)) < 0).all()
    assert count(store, field="n", operator="greater_than", value=0) == len(kept)


def test_a_removed_user_comes_back_empty_when_a_record_recreates_them():
    store = AudienceStore()
    store.apply_profiles([profile(7, country="DE", attributes={"vip": True}), profile(8, country="FR")])
    store.apply_events([event(7, "buy", 1)])
    version = store.version
    assert store.remove_users([7, 99]) == 1 and store.version != version
    assert store.remove_users([99]) == 0
    store.apply_profiles([profile(7, 30)])
    row = store.frame().filter(pl.col("user_id") == 7).row(0, named=True)
    assert row["country"] is None and row["attr.vip"] is None


def test_snapshot_state_keeps_the_erased_markers():
    store = AudienceStore()
    store.apply_profiles([profile(1)])
    store.erased["ab" * 32] = 123
    meta, arrays = store.export_state()
    assert AudienceStore.from_state(meta, arrays).erased == {"ab" * 32: 123}

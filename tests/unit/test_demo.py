"""The demo audience: valid records, deterministic, and shaped so that segments are interesting."""

from __future__ import annotations

import statistics
import sys
import zoneinfo
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import UserEvent, UserProfile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import demo  # noqa: E402

NOW = datetime(2025, 6, 10, 0, 0, tzinfo=timezone.utc)
USERS = 2_000
SEED = 7
WINDOW = timedelta(days=90)

# Written out here rather than taken from demo, so that the test checks the data.
DIAL_CODES = {
    "US": "+1", "CA": "+1", "GB": "+44", "DE": "+49", "FR": "+33", "ES": "+34", "IT": "+39",
    "NL": "+31", "BR": "+55", "MX": "+52", "IN": "+91", "JP": "+81", "AU": "+61", "PL": "+48", "SE": "+46",
}
SPOKEN = {
    "US": {"en", "es"}, "CA": {"en", "fr"}, "GB": {"en"}, "AU": {"en"}, "IN": {"en", "hi"},
    "DE": {"de", "en"}, "FR": {"fr", "en"}, "ES": {"es", "en"}, "IT": {"it", "en"}, "NL": {"nl", "en"},
    "BR": {"pt", "en"}, "MX": {"es", "en"}, "JP": {"ja", "en"}, "PL": {"pl", "en"}, "SE": {"sv", "en"},
}


@pytest.fixture(scope="module")
def audience() -> list[tuple[dict, list[dict]]]:
    profiles = list(demo.generate_profiles(USERS, SEED, now=NOW))
    return [(profile, demo.generate_events(profile, SEED, now=NOW)) for profile in profiles]


@pytest.fixture(scope="module")
def zones_by_country() -> dict[str, set[str]]:
    """Country → IANA zones, from the tz database's own zone.tab."""
    for folder in zoneinfo.TZPATH:
        table = Path(folder) / "zone.tab"
        if table.exists():
            break
    else:
        pytest.fail("zone.tab not found on zoneinfo.TZPATH: install the tzdata package")
    zones: dict[str, set[str]] = {}
    for line in table.read_text().splitlines():
        if line and not line.startswith("#"):
            country, _, zone = line.split("\t")[:3]
            zones.setdefault(country, set()).add(zone)
    return zones


def _purchases(events: list[dict]) -> list[dict]:
    return [e for e in events if e["name"] == "purchase"]


def _share(audience, predicate) -> float:
    return sum(1 for profile, events in audience if predicate(profile, events)) / len(audience)


# ── Records are valid ──────────────────────────────────────────────────────────


def test_every_profile_and_event_validates_as_dict_and_as_json(audience):
    for profile, events in audience:
        UserProfile.model_validate(profile)
        UserProfile.model_validate_json(demo.encode(profile))
        for event in events:
            UserEvent.model_validate(event)
            UserEvent.model_validate_json(demo.encode(event))


def test_encoded_event_round_trips_revenue_and_times_exactly(audience):
    event = next(e for _, events in audience for e in _purchases(events))
    parsed = UserEvent.model_validate_json(demo.encode(event))
    assert parsed.revenue == event["revenue"]
    assert parsed.occurred_at == event["occurred_at"]
    assert parsed.event_id == event["event_id"]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), user_id=st.integers(1, 2**63 - 1))
def test_any_seed_and_user_id_gives_valid_records(seed, user_id):
    profile = next(demo.generate_profiles(1, seed, start_id=user_id, now=NOW))
    UserProfile.model_validate_json(demo.encode(profile))
    for event in demo.generate_events(profile, seed, now=NOW):
        UserEvent.model_validate_json(demo.encode(event))


# ── Deterministic ──────────────────────────────────────────────────────────────


def test_same_seed_gives_the_same_bytes():
    def run(seed):
        return [
            (demo.encode(p), [demo.encode(e) for e in demo.generate_events(p, seed, now=NOW)])
            for p in demo.generate_profiles(200, seed, now=NOW)
        ]

    assert run(SEED) == run(SEED)
    assert run(SEED) != run(SEED + 1)


def test_a_user_is_the_same_whatever_batch_generates_it():
    whole = list(demo.generate_profiles(50, SEED, start_id=1, now=NOW))
    tail = list(demo.generate_profiles(10, SEED, start_id=41, now=NOW))
    assert whole[40:] == tail


def test_a_later_day_gives_the_same_events_and_ids_moved_by_whole_days():
    later = NOW + timedelta(days=3)  # no DST change in either hemisphere between the two
    for before, after in zip(
        demo.generate_profiles(300, SEED, now=NOW), demo.generate_profiles(300, SEED, now=later)
    ):
        assert after["created_at"] == before["created_at"] + timedelta(days=3)
        old = demo.generate_events(before, SEED, now=NOW)
        new = demo.generate_events(after, SEED, now=later)
        assert [e["event_id"] for e in new] == [e["event_id"] for e in old]
        assert [e["occurred_at"] for e in new] == [e["occurred_at"] + timedelta(days=3) for e in old]


def test_default_now_is_the_start_of_the_utc_day():
    now = demo.demo_now()
    assert now.tzinfo is not None and (now.hour, now.minute, now.second, now.microsecond) == (0, 0, 0, 0)


# ── Profiles look like people ──────────────────────────────────────────────────


def test_emails_are_unique_and_on_reserved_example_domains(audience):
    emails = [profile["email"] for profile, _ in audience]
    assert len(set(emails)) == len(emails)
    assert {email.rsplit("@", 1)[1] for email in emails} <= {"example.com", "example.org", "example.net"}


def test_time_zones_belong_to_the_users_country(audience, zones_by_country):
    for profile, _ in audience:
        assert profile["timezone"] in zones_by_country[profile["country"]], profile


def test_countries_with_several_zones_use_several(audience):
    for country in ("US", "BR", "CA", "AU", "MX"):
        zones = {p["timezone"] for p, _ in audience if p["country"] == country}
        assert len(zones) >= 3, (country, zones)


def test_phones_carry_the_country_calling_code(audience):
    for profile, _ in audience:
        if profile["phone"] is not None:
            assert profile["phone"].startswith(DIAL_CODES[profile["country"]]), profile


def test_languages_are_spoken_in_the_users_country(audience):
    for profile, _ in audience:
        assert profile["language"].split("-")[0] in SPOKEN[profile["country"]], profile
    assert _share(audience, lambda p, _: p["language"] == "en" and p["country"] in {"DE", "FR", "JP"}) > 0


def test_countries_are_weighted_with_the_us_first(audience):
    counts = {}
    for profile, _ in audience:
        counts[profile["country"]] = counts.get(profile["country"], 0) + 1
    assert max(counts, key=counts.get) == "US"
    assert len(counts) >= 12


def test_only_mobile_users_have_push_tokens(audience):
    for profile, _ in audience:
        if profile["attributes"]["platform"] == "web":
            assert profile["push_tokens"] == []
    assert _share(audience, lambda p, _: bool(p["push_tokens"])) > 0.5


def test_plans_are_skewed_towards_free(audience):
    plans = [p["attributes"]["plan"] for p, _ in audience]
    assert plans.count("free") > plans.count("pro") > plans.count("enterprise") > 0


def test_never_purchased_users_have_no_last_purchase_or_value(audience):
    for profile, _ in audience:
        attributes = profile["attributes"]
        if attributes["purchase_count"] == 0:
            assert attributes["last_purchase_date"] is None
            assert attributes["lifetime_value"] == 0
        else:
            assert attributes["signup_date"] <= attributes["last_purchase_date"] <= NOW.date().isoformat()
            assert attributes["lifetime_value"] > 0


def test_lifetime_value_grows_with_purchase_count(audience):
    def median_value(low, high):
        return statistics.median(
            p["attributes"]["lifetime_value"]
            for p, _ in audience
            if low <= p["attributes"]["purchase_count"] <= high
        )

    assert median_value(1, 2) < median_value(3, 5) < median_value(6, 10_000)


# ── Events follow the profile ──────────────────────────────────────────────────


def test_events_belong_to_their_user_and_lie_in_the_last_90_days(audience):
    for profile, events in audience:
        for event in events:
            assert event["user_id"] == profile["user_id"]
            assert NOW - WINDOW <= event["occurred_at"] <= NOW
            assert event["occurred_at"] >= profile["created_at"]
        times = [e["occurred_at"] for e in events]
        assert times == sorted(times)


def test_event_ids_are_unique(audience):
    ids = [e["event_id"] for _, events in audience for e in events]
    assert len(set(ids)) == len(ids)


def test_about_five_events_per_user(audience):
    mean = sum(len(events) for _, events in audience) / len(audience)
    assert 3.5 <= mean <= 7.5


def test_purchases_carry_revenue_and_an_order_id_and_nothing_else_does(audience):
    orders = set()
    for _, events in audience:
        for event in events:
            if event["name"] == "purchase":
                assert event["revenue"] > 0
                assert event["properties"]["order_id"] not in orders
                orders.add(event["properties"]["order_id"])
            else:
                assert "revenue" not in event
    assert orders


def test_purchases_agree_with_the_profile(audience):
    window_start = (NOW - WINDOW).date().isoformat()
    for profile, events in audience:
        attributes = profile["attributes"]
        purchases = _purchases(events)
        assert len(purchases) <= attributes["purchase_count"]
        assert sum(e["revenue"] for e in purchases) <= attributes["lifetime_value"] + 0.01 * len(purchases)
        last = attributes["last_purchase_date"]
        if last is not None and last >= window_start:
            assert purchases[-1]["occurred_at"].date().isoformat() == last, profile
        else:
            assert purchases == [], profile


def test_in_window_purchase_counts_follow_purchase_count(audience):
    in_window = [(p["attributes"]["purchase_count"], len(_purchases(e))) for p, e in audience]
    heavy = [n for count, n in in_window if count > 5]
    light = [n for count, n in in_window if 0 < count <= 2]
    assert statistics.mean(heavy) > 2 * statistics.mean(light)


def test_some_carts_are_abandoned(audience):
    def abandoned(_, events):
        added = any(e["name"] == "added_to_cart" for e in events)
        return added and not _purchases(events)

    assert _share(audience, abandoned) > 0.02


# ── The spec's example segments have members, but not everyone ─────────────────


def _some_but_not_all(share: float) -> bool:
    return 0.01 <= share <= 0.6


def test_rfm_conditions_each_select_some_but_not_all_users(audience):
    cutoff = (NOW - timedelta(days=30)).date().isoformat()
    attrs = [p["attributes"] for p, _ in audience]
    assert _some_but_not_all(sum(a["purchase_count"] > 5 for a in attrs) / USERS)
    assert _some_but_not_all(sum(a["lifetime_value"] > 1000 for a in attrs) / USERS)
    assert _some_but_not_all(sum((a["last_purchase_date"] or "") >= cutoff for a in attrs) / USERS)


def test_high_value_recent_frequent_segment_is_not_empty(audience):
    cutoff = (NOW - timedelta(days=30)).date().isoformat()
    members = [
        p for p, _ in audience
        if (p["attributes"]["last_purchase_date"] or "") >= cutoff
        and p["attributes"]["purchase_count"] > 5
        and p["attributes"]["lifetime_value"] > 1000
    ]
    assert 0 < len(members) < USERS * 0.1


def test_viewed_but_not_purchased_in_last_7_days_segment_is_not_empty(audience):
    since = NOW - timedelta(days=7)

    def did(events, name):
        return any(e["name"] == name and e["occurred_at"] >= since for e in events)

    assert _some_but_not_all(_share(audience, lambda _, ev: did(ev, "product_viewed")))
    assert _share(audience, lambda _, ev: did(ev, "product_viewed") and not did(ev, "purchase")) > 0.01


def test_last_purchase_dates_spread_over_months(audience):
    dates = [
        date.fromisoformat(p["attributes"]["last_purchase_date"])
        for p, _ in audience
        if p["attributes"]["last_purchase_date"]
    ]
    days_ago = [(NOW.date() - d).days for d in dates]
    assert min(days_ago) <= 7 and max(days_ago) > 365

"""Date triggers: whose birthday or anniversary a daily run covers (pipeline/anniversaries.py)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pytest

from pipeline.anniversaries import (
    anniversary_in,
    as_date,
    celebrating,
    covered_date,
    date_field_problem,
    is_anniversary,
)

NINE = time(9, 0)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(("year", "expected"), [(2027, date(2027, 2, 28)), (2028, date(2028, 2, 29)),
                                                (2100, date(2100, 2, 28))])
def test_a_leap_day_anniversary_is_on_28_february_in_common_years(year, expected):
    assert anniversary_in(year, 2, 29) == expected


def test_leap_day_birthdays_are_greeted_once_a_year():
    born = date(2000, 2, 29)
    days = [date(2027, 1, 1) + timedelta(days=i) for i in range(365 * 2 + 1)]  # 2027 (common) and 2028 (leap)
    greeted = [d for d in days if is_anniversary(born, d)]
    assert greeted == [date(2027, 2, 28), date(2028, 2, 29)]


def test_the_day_of_the_date_itself_is_no_anniversary():
    assert not is_anniversary(date(2026, 12, 4), date(2026, 12, 4))
    assert is_anniversary(date(2025, 12, 4), date(2026, 12, 4))
    assert not is_anniversary(date(2025, 12, 5), date(2026, 12, 4))


@pytest.mark.parametrize(("raw", "expected"), [
    ("1990-05-17", date(1990, 5, 17)),
    ("1992-02-29", date(1992, 2, 29)),
    ("1990-02-29", None),  # no such day
    ("2024-03-01T23:30:00+00:00", date(2024, 3, 1)),
    (datetime(2024, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2))), date(2024, 3, 2)),  # its UTC date
    (date(1990, 5, 17), date(1990, 5, 17)),
    ("soon", None), (17, None), (None, None),
])
def test_profile_values_read_as_dates(raw, expected):
    assert as_date(raw) == expected


def test_a_run_covers_each_users_next_local_hour():
    fired = at("2026-12-04T00:00:00")
    assert covered_date(NINE, "Europe/Berlin", fired) == date(2026, 12, 4)      # 08:00 UTC, later today
    assert covered_date(NINE, "America/New_York", fired) == date(2026, 12, 4)   # 19:00 on the 3rd there: 09:00 of the 4th
    assert covered_date(NINE, "Pacific/Auckland", fired) == date(2026, 12, 5)   # 13:00 on the 4th there: next is the 5th
    assert covered_date(NINE, "Asia/Kolkata", fired) == date(2026, 12, 4)       # 05:30 there


def test_daily_runs_cover_every_local_day_once_in_every_zone():
    for tz in ("Pacific/Kiritimati", "Pacific/Auckland", "Asia/Kolkata", "Europe/Berlin", "America/New_York",
               "Pacific/Pago_Pago"):
        start = at("2027-03-01T00:00:00")
        covered = [covered_date(NINE, tz, start + timedelta(days=i)) for i in range(60)]  # across the spring DST change
        assert covered == sorted(set(covered)), tz
        assert (covered[-1] - covered[0]).days == 59, tz


def test_celebrating_picks_the_users_whose_covered_day_is_their_anniversary():
    fired = at("2027-02-28T00:00:00")
    profiles = [
        {"user_id": 1, "timezone": "Europe/Berlin", "attributes": {"birthday": "1992-02-29"}},  # leap day, 2027: the 28th
        {"user_id": 2, "timezone": "Pacific/Auckland", "attributes": {"birthday": "1990-02-28"}},  # their run covers Mar 1
        {"user_id": 3, "timezone": "Pacific/Auckland", "attributes": {"birthday": "1990-03-01"}},
        {"user_id": 4, "timezone": "UTC", "attributes": {"birthday": "1985-02-28"}},  # no zone: the campaign's (Berlin)
        {"user_id": 5, "timezone": "Europe/Berlin", "attributes": {"birthday": "1985-03-01"}},  # tomorrow
        {"user_id": 6, "timezone": "Europe/Berlin", "attributes": {}},
        {"user_id": 7, "timezone": "Europe/Berlin", "attributes": {"birthday": "not a date"}},
    ]
    assert celebrating(profiles, "attributes.birthday", NINE, "Europe/Berlin", fired) == [1, 3, 4]


def test_signup_anniversaries_read_created_at():
    fired = at("2026-06-10T00:00:00")
    profiles = [{"user_id": 1, "timezone": "Europe/Berlin", "created_at": at("2024-06-10T12:00:00")},
                {"user_id": 2, "timezone": "Europe/Berlin", "created_at": at("2026-06-10T00:30:00")}]  # today: no
    assert celebrating(profiles, "created_at", NINE, "UTC", fired) == [1]


@pytest.mark.parametrize(("field", "ok"), [("attributes.birthday", True), ("created_at", True),
                                           ("attributes.", False), ("birthday", False), ("", False), (None, False),
                                           ("attributes.bad name", False)])
def test_date_fields_are_created_at_or_an_attribute(field, ok):
    assert (date_field_problem(field) is None) is ok

"""Date triggers: who has a birthday or an anniversary on the day a daily run covers (pure).

A date-triggered campaign sends once a year to each user, on the anniversary of a date of
their profile (``created_at`` for the sign-up anniversary, or an attribute such as
``attributes.birthday``), at a wall-clock hour in the user's own time zone. A daily run
fired at instant T covers, for each user, the first occurrence of that hour after T in the
user's zone: the run's audience is the users for whom that local date is their anniversary,
and the gate then releases each one at their hour (local-hour delivery). Runs 24 h apart
cover each user's local days once each, whatever their offset.

29 February: in a common year the anniversary is on 28 February (as most products and
legal age counting do), so someone born on a leap day is greeted every year, once.
The day of the date itself is no anniversary (a user who signed up today is not greeted).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timezone
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.gate import NO_ZONE, LocalDelivery, is_zone, local_release

DATE_FIELDS = ("created_at",)  # besides "attributes.<name>"
ATTRIBUTE_PREFIX = "attributes."


def date_field_problem(field: object) -> str | None:
    """Why ``field`` cannot name a profile date, or None."""
    if not isinstance(field, str) or not field:
        return "a profile date such as 'attributes.birthday' or 'created_at' is required"
    if field in DATE_FIELDS:
        return None
    name = field.removeprefix(ATTRIBUTE_PREFIX)
    if field.startswith(ATTRIBUTE_PREFIX) and name and name.replace("_", "").isalnum():
        return None
    return f"{field!r} is not 'created_at' or 'attributes.<name>'"


def anniversary_in(year: int, month: int, day: int) -> date:
    """The day the anniversary of (month, day) falls on in ``year``: 29 February is 28 February
    in a common year."""
    if month == 2 and day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return date(year, month, day)


def is_anniversary(value: date, on: date) -> bool:
    """Whether ``on`` is an anniversary of ``value`` (a later year, same day; see 29 February)."""
    return on.year > value.year and anniversary_in(on.year, value.month, value.day) == on


def as_date(raw: object) -> date | None:
    """A profile value as a calendar date: a date, a datetime (its UTC date), or an ISO 8601
    string ("1990-02-29" is no date; "1992-02-29" is); anything else None."""
    if isinstance(raw, datetime):
        return (raw if raw.tzinfo else raw.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).date()
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str) and len(raw) >= 10:
        try:
            return date.fromisoformat(raw[:10])
        except ValueError:
            return None
    return None


def covered_date(at: time, tz: str, fired_at: datetime) -> date:
    """The local date of the first ``at`` o'clock in ``tz`` at or after ``fired_at``: the day a run fired
    then covers for a user of that zone (the gate releases them at that hour, ``gate.local_release``)."""
    release = local_release(fired_at, tz, LocalDelivery(at, "next_day", tz))
    assert release is not None  # next_day always finds the hour
    return release.astimezone(ZoneInfo(tz)).date()


def profile_date(profile: Mapping[str, Any], field: str) -> date | None:
    """The date ``field`` names in a profile row (``created_at``, or ``attributes.<name>``)."""
    if field.startswith(ATTRIBUTE_PREFIX):
        return as_date((profile.get("attributes") or {}).get(field.removeprefix(ATTRIBUTE_PREFIX)))
    return as_date(profile.get(field))


def celebrating(profiles: Iterable[Mapping[str, Any]], field: str, at: time, default_zone: str,
                fired_at: datetime) -> list[int]:
    """The user ids of ``profiles`` whose anniversary of ``field`` is the local day that a run fired at
    ``fired_at`` covers for them (the first ``at`` o'clock after it, in their zone)."""
    chosen = []
    for profile in profiles:
        value = profile_date(profile, field)
        if value is None:
            continue
        tz = profile.get("timezone")
        tz = tz if tz not in NO_ZONE and is_zone(tz) else default_zone  # as the gate reads it (gate.user_zone)
        if is_anniversary(value, covered_date(at, tz, fired_at)):
            chosen.append(int(profile["user_id"]))
    return chosen

"""Event rules against one record: which rules an event matches, and a DSL condition on one value.
Pure, no I/O.

The segment DSL (pipeline/segments/dsl.py) is evaluated over columns for whole audiences; here the
same operators apply to ONE record: an event's properties (a rule's ``where``) or a user's profile
(a journey's attribute test). Normalized values are as the parser leaves them: numbers as float,
dates as ``Instant`` (resolved against ``now``), durations as ``timedelta``.

A record is an event if it carries a user id (``user_id``, else its key) and a name (``name`` or
``event``); properties are ``properties`` if present, else the record's other top-level fields, so
a topic of flat JSON records works as well as ``user-events``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from pipeline.journeys.model import Rule
from pipeline.segments.dsl import Condition, Criteria, Group, Instant
from schemas.encoding import is_bigint_id

_RESERVED = {"user_id", "name", "event", "occurred_at", "event_id", "properties"}


@dataclass(frozen=True, slots=True)
class Event:
    """One event as the trigger stages see it."""

    user_id: int
    name: str
    at: float  # epoch seconds (occurred_at, else when it was read)
    properties: Mapping[str, Any]
    event_id: str  # stable: the record's event_id, else a hash of its content


def event_of(record: object, key: bytes | None, read_at: float) -> Event | str:
    """The event a record holds, or why it is not one."""
    if not isinstance(record, Mapping):
        return "not a JSON object"
    uid = record.get("user_id")
    if uid is None and key:
        try:
            uid = int(key.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            uid = None
    if isinstance(uid, str) and uid.isdigit():
        uid = int(uid)
    if isinstance(uid, bool) or not isinstance(uid, int) or not is_bigint_id(uid):
        return "no user_id (a positive integer) in the record or its key"
    name = record.get("name", record.get("event"))
    if not isinstance(name, str) or not name:
        return "no event name ('name' or 'event')"
    props = record.get("properties")
    if not isinstance(props, Mapping):
        props = {k: v for k, v in record.items() if k not in _RESERVED}
    at = _epoch(record.get("occurred_at")) or read_at
    event_id = record.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        digest = hashlib.blake2b(f"{uid}|{name}|{record.get('occurred_at')}|{sorted(props.items())!r}".encode(),
                                 digest_size=12).hexdigest()
        event_id = digest
    return Event(uid, name, at, props, event_id)


def _epoch(raw: object) -> float | None:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw) / (1000.0 if raw > 1e11 else 1.0)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return None


def matches(rule: Rule, event: Event, now: datetime | None = None) -> bool:
    """Whether ``event`` is one ``rule`` names, its properties passing the rule's filters."""
    if rule.event != event.name:
        return False
    return rule.where is None or criteria_hold(rule.where, event.properties, now)


def criteria_hold(criteria: Criteria, values: Mapping[str, Any], now: datetime | None = None) -> bool:
    return _group(criteria.root, values, now or datetime.now(timezone.utc))


def _group(group: Group, values: Mapping[str, Any], now: datetime) -> bool:
    results = (_group(c, values, now) if isinstance(c, Group) else condition_holds(c, _lookup(values, c), now)
               for c in group.conditions)
    return all(results) if group.logic == "AND" else any(results)


def _lookup(values: Mapping[str, Any], cond: Condition) -> Any:
    name = cond.target.name
    if name in values:
        return values[name]
    for prefix in ("attributes.", "user.", "properties."):  # as written, when the parser kept it
        if cond.field.startswith(prefix) and cond.field[len(prefix):] in values:
            return values[cond.field[len(prefix):]]
    return values.get(cond.field)


def condition_holds(cond: Condition, value: Any, now: datetime) -> bool:
    """One DSL condition against one value (None: absent). A value of the wrong kind does not match,
    except under the negations (not_equals, not_in, not_exists), which it passes, as in segments."""
    op, want = cond.operator, cond.value
    if op == "exists":
        return value is not None
    if op == "not_exists":
        return value is None
    if op in ("not_equals", "not_in"):
        if value is None:
            return True
        positive = Condition(cond.field, cond.target, "equals" if op == "not_equals" else "in", want, cond.raw_value)
        return not condition_holds(positive, value, now)
    if value is None:
        return False
    if op == "equals":
        return _equal(value, want, now)
    if op == "in":
        return any(_equal(value, w, now) for w in want)
    if op == "contains":
        return isinstance(value, str) and want.lower() in value.lower()
    if op in ("greater_than", "less_than", "before", "after"):
        left, right = _comparable(value, want, now)
        if left is None:
            return False
        return left > right if op in ("greater_than", "after") else left < right
    if op == "between":
        low, high = want
        left, lo = _comparable(value, low, now)
        _, hi = _comparable(value, high, now)
        return left is not None and lo is not None and hi is not None and lo <= left <= hi
    if op == "within_last":
        moment = _moment(value)
        return moment is not None and now - want <= moment <= now
    return False


def _equal(value: Any, want: Any, now: datetime) -> bool:
    if isinstance(want, Instant):
        moment = _moment(value)
        if moment is None:
            return False
        at = want.resolve(now)
        return moment.date() == at.date() if want.whole_day else moment == at
    if isinstance(want, bool) or isinstance(value, bool):
        return value is want if isinstance(want, bool) else False
    if isinstance(want, float):
        return _number(value) == want
    return str(value) == str(want)


def _comparable(value: Any, bound: Any, now: datetime) -> tuple[Any, Any]:
    if isinstance(bound, Instant):
        moment = _moment(value)
        return (moment, bound.resolve(now)) if moment is not None else (None, None)
    number = _number(value)
    return (number, bound) if number is not None and isinstance(bound, (int, float)) else (None, None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    epoch = _epoch(value)
    return datetime.fromtimestamp(epoch, tz=timezone.utc) if epoch is not None else None


def moment_of(value: Any) -> datetime | None:
    """A profile value as a moment: an ISO date or time, or epoch seconds (milliseconds if huge)."""
    return _moment(value)


def dedup_value(rule: Rule, event: Event) -> str | None:
    """The value of the rule's dedup key in the event (a retried upstream event enters once)."""
    if rule.dedup_key is None:
        return None
    value = event.properties.get(rule.dedup_key)
    return None if value is None else str(value)


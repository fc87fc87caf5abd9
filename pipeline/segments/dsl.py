"""The segment criteria DSL: parse and validate once, at the API boundary.

A segment definition is data (spec, "Segment Criteria DSL"):

    {"conditions": [cond | group, ...], "logic": "AND" | "OR", "exclude_segments": [ids]}
    group = {"conditions": [...], "logic": ...}          (nested, any depth up to MAX_DEPTH)
    cond  = {"field": ..., "operator": ..., "value": ...}

``parse_criteria`` turns that JSON into a small typed tree (``Criteria``, ``Group``,
``Condition``) or raises ``CriteriaError`` listing every problem with the path of
the offending key ("criteria.conditions.1.operator") and why. Fields name one of:

    country, language, timezone, email, phone, push, created_at   (optionally "user.")
    an attribute by bare name, "user.<name>" or "attributes.<name>"
    an event as "events.<name>"

Whether an attribute or event *exists* is only known to an audience store: pass a
``FieldCatalog`` (an ``AudienceStore`` is one) and operators and values are
checked against the kind of each attribute it knows. An attribute or event no
user has yet is not an error: upstream systems send attributes when they have
them, and a marketer builds the segment before the data arrives. Such a name is
checked for shape only (as without a catalog, when stored criteria are read
back), nobody has it until it arrives, and ``unseen_fields`` names it so the
API can warn. Unknown operators and malformed values are refused either way.

Times are resolved at evaluation, not here: "30_days_ago" stays relative, so a
stored dynamic segment keeps meaning "the last 30 days" tomorrow.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol, Union

Kind = Literal["text", "number", "flag", "presence", "time", "event"]

MAX_DEPTH = 8
MAX_CONDITIONS = 200
MAX_LIST_VALUES = 1000

# Built-in user fields and what kind of value they hold. email/phone/push say
# whether the user can be reached on that channel ("presence").
BUILTINS: dict[str, Kind] = {
    "country": "text",
    "language": "text",
    "timezone": "text",
    "email": "presence",
    "phone": "presence",
    "push": "presence",
    "created_at": "time",
}

OPERATORS: dict[Kind, frozenset[str]] = {
    "text": frozenset({"equals", "not_equals", "in", "not_in", "contains", "exists", "not_exists"}),
    "number": frozenset({"equals", "not_equals", "in", "not_in", "greater_than", "less_than",
                         "between", "exists", "not_exists"}),
    "flag": frozenset({"equals", "not_equals", "exists", "not_exists"}),
    "presence": frozenset({"equals", "not_equals", "exists", "not_exists"}),
    "time": frozenset({"equals", "not_equals", "greater_than", "less_than", "before", "after",
                       "between", "within_last", "exists", "not_exists"}),
    "event": frozenset({"exists", "not_exists", "at_least"}),
}
ATTRIBUTE_OPERATORS = OPERATORS["text"] | OPERATORS["number"] | OPERATORS["time"]
ALL_OPERATORS = ATTRIBUTE_OPERATORS | OPERATORS["event"]

_UNITS = {"minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400}
_DURATION = re.compile(r"^(?:last_)?([1-9][0-9]{0,5})_(minute|hour|day|week)s?$")
_AGO = re.compile(r"^([0-9]{1,6})_(minute|hour|day|week)s?_ago$")
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")  # as schemas.records.UserEvent


class CriteriaError(ValueError):
    """Invalid criteria; ``problems`` lists (path, reason) pairs, path like "criteria.logic"."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in problems))


class FieldCatalog(Protocol):
    """What a store knows: the kind of each attribute seen, and the event names seen."""

    def attribute_kind(self, name: str) -> Kind | None: ...

    def has_event(self, name: str) -> bool: ...


# ── The parsed tree ────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class FieldRef:
    """What a condition's field points at: a built-in, an attribute or an event."""

    source: Literal["builtin", "attribute", "event"]
    name: str


@dataclass(frozen=True, slots=True)
class Instant:
    """A point in time: absolute (``at``) or ``seconds_ago`` before evaluation's ``now``."""

    at: datetime | None = None
    seconds_ago: int = 0
    today: bool = False  # midnight UTC of now's day
    whole_day: bool = False  # a date without a time: "equals" means that UTC day

    def resolve(self, now: datetime) -> datetime:
        if self.at is not None:
            return self.at
        if self.today:
            return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        return now - timedelta(seconds=self.seconds_ago)


@dataclass(frozen=True, slots=True)
class Condition:
    field: str  # as written, for to_json
    target: FieldRef
    operator: str
    value: Any  # normalized: str, float, bool, tuple, Instant, timedelta, int (at_least) or None
    raw_value: Any = None  # as written, for to_json

    def to_json(self) -> dict:
        out: dict[str, Any] = {"field": self.field, "operator": self.operator}
        if self.raw_value is not None:
            out["value"] = self.raw_value
        return out


@dataclass(frozen=True, slots=True)
class Group:
    conditions: tuple[Union["Condition", "Group"], ...]
    logic: Literal["AND", "OR"] = "AND"

    def to_json(self) -> dict:
        return {"conditions": [c.to_json() for c in self.conditions], "logic": self.logic}


@dataclass(frozen=True)
class Criteria:
    """A validated segment definition; evaluate it with ``AudienceStore``."""

    root: Group
    exclude_segments: list[int] = field(default_factory=list)

    @property
    def conditions(self) -> tuple[Condition | Group, ...]:
        return self.root.conditions

    @property
    def logic(self) -> str:
        return self.root.logic

    def to_json(self) -> dict:
        """Canonical JSON for ``segments.criteria``; ``parse_criteria`` reads it back unchanged."""
        return {**self.root.to_json(), "exclude_segments": list(self.exclude_segments)}

    def targets(self) -> set[FieldRef]:
        """Every field the definition reads (exclusions not included)."""
        found: set[FieldRef] = set()
        stack: list[Condition | Group] = [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, Group):
                stack.extend(node.conditions)
            else:
                found.add(node.target)
        return found


# ── Parsing ────────────────────────────────────────────────────────────────────

def parse_criteria(data: object, catalog: FieldCatalog | None = None) -> Criteria:
    """Validate ``data`` and return ``Criteria``; raise ``CriteriaError`` naming each problem."""
    parser = _Parser(catalog)
    root = parser.group(data, "criteria", depth=0, top=True)
    excluded = parser.exclusions(data)
    if parser.problems:
        raise CriteriaError(parser.problems)
    assert root is not None
    return Criteria(root, excluded)


def unseen_fields(criteria: Criteria, catalog: FieldCatalog) -> list[tuple[str, str]]:
    """(path of the field, reason) for each condition on an attribute or event ``catalog`` has not seen yet.

    Not problems: the criteria are valid, and nobody matches such a condition
    (``not_exists`` and the other negations: everybody) until the data arrives.
    """
    found: list[tuple[str, str]] = []
    stack: list[tuple[Condition | Group, str]] = [(criteria.root, "criteria")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Group):
            stack.extend(reversed([(c, f"{path}.conditions.{i}") for i, c in enumerate(node.conditions)]))
            continue
        target = node.target
        if target.source == "attribute" and catalog.attribute_kind(target.name) is None:
            found.append((f"{path}.field", f"no user has attribute {target.name!r} yet"))
        elif target.source == "event" and not catalog.has_event(target.name):
            found.append((f"{path}.field", f"no user has had event {target.name!r} yet"))
    return found


class _Parser:
    def __init__(self, catalog: FieldCatalog | None) -> None:
        self.catalog = catalog
        self.problems: list[tuple[str, str]] = []
        self.count = 0

    def fail(self, path: str, reason: str) -> None:
        self.problems.append((path, reason))

    def group(self, data: object, path: str, depth: int, top: bool = False) -> Group | None:
        if not isinstance(data, dict):
            self.fail(path, "expected an object with 'conditions' and 'logic'")
            return None
        allowed = {"conditions", "logic"} | ({"exclude_segments"} if top else set())
        for key in data:
            if key not in allowed:
                extra = " (only at the top level)" if key == "exclude_segments" else ""
                self.fail(f"{path}.{key}", f"unknown key{extra}; expected one of {sorted(allowed)}")
        logic = data.get("logic", "AND")
        if not isinstance(logic, str) or logic.upper() not in ("AND", "OR"):
            self.fail(f"{path}.logic", "must be 'AND' or 'OR'")
            logic = "AND"
        conditions = data.get("conditions", [] if top else None)
        if not isinstance(conditions, list):
            self.fail(f"{path}.conditions", "must be a list of conditions or groups")
            return None
        if not conditions and not top:
            self.fail(f"{path}.conditions", "a group needs at least one condition")
        if depth >= MAX_DEPTH:
            self.fail(path, f"groups nest at most {MAX_DEPTH} deep")
            return None
        parsed: list[Condition | Group] = []
        for i, item in enumerate(conditions):
            item_path = f"{path}.conditions.{i}"
            self.count += 1
            if self.count > MAX_CONDITIONS:
                self.fail(item_path, f"at most {MAX_CONDITIONS} conditions in all")
                break
            node = (self.group(item, item_path, depth + 1)
                    if isinstance(item, dict) and "conditions" in item and "field" not in item
                    else self.condition(item, item_path))
            if node is not None:
                parsed.append(node)
        return Group(tuple(parsed), logic.upper())  # type: ignore[arg-type]

    def exclusions(self, data: object) -> list[int]:
        if not isinstance(data, dict) or data.get("exclude_segments") is None:
            return []
        ids = data["exclude_segments"]
        if not isinstance(ids, list):
            self.fail("criteria.exclude_segments", "must be a list of segment ids")
            return []
        out: list[int] = []
        for i, value in enumerate(ids):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                self.fail(f"criteria.exclude_segments.{i}", "must be a positive segment id")
            elif value not in out:
                out.append(value)
        return out

    def condition(self, data: object, path: str) -> Condition | None:
        if not isinstance(data, dict):
            self.fail(path, "expected a condition {field, operator, value} or a group {conditions, logic}")
            return None
        for key in data:
            if key not in ("field", "operator", "value"):
                self.fail(f"{path}.{key}", "unknown key; a condition has field, operator and value")
        name, operator, raw = data.get("field"), data.get("operator"), data.get("value")
        target, kind = self.field(name, f"{path}.field")
        if not isinstance(operator, str) or operator not in ALL_OPERATORS:
            self.fail(f"{path}.operator", f"unknown operator {operator!r}; known: {', '.join(sorted(ALL_OPERATORS))}")
            return None
        if target is None:
            return None
        allowed = OPERATORS[kind] if kind is not None else ATTRIBUTE_OPERATORS
        if operator not in allowed:
            what = f"a {kind} field" if kind else "an attribute"
            self.fail(f"{path}.operator", f"{operator!r} does not apply to {what}; use one of {', '.join(sorted(allowed))}")
            return None
        value = self.value(kind, operator, raw, f"{path}.value")
        if value is _INVALID:
            return None
        if target.name == "country" and target.source == "builtin" and value is not None:
            value = tuple(v.upper() for v in value) if isinstance(value, tuple) else value.upper()
        return Condition(name, target, operator, value, raw)  # type: ignore[arg-type]

    def field(self, name: object, path: str) -> tuple[FieldRef | None, Kind | None]:
        if not isinstance(name, str) or not name:
            self.fail(path, "must be a field name such as 'country', 'plan' or 'events.purchase'")
            return None, None
        if name.startswith("events."):
            event = name.removeprefix("events.")
            if not _EVENT_NAME.match(event):
                self.fail(path, f"unknown field {name!r}: not a valid event name")
                return None, None
            return FieldRef("event", event), "event"
        bare = name.removeprefix("user.")
        if name.startswith("attributes."):
            bare, builtin_allowed = name.removeprefix("attributes."), False
        else:
            builtin_allowed = True
        if builtin_allowed and bare in BUILTINS:
            return FieldRef("builtin", bare), BUILTINS[bare]
        if not _ATTRIBUTE_NAME.match(bare):
            self.fail(path, f"unknown field {name!r}: not a user field, attribute or 'events.<name>'")
            return None, None
        # None: an attribute no user has yet, checked for shape only (see unseen_fields).
        kind = self.catalog.attribute_kind(bare) if self.catalog is not None else None
        return FieldRef("attribute", bare), kind

    def value(self, kind: Kind | None, operator: str, raw: Any, path: str) -> Any:
        """The value normalized for ``operator`` on a field of ``kind`` (None: attribute of unknown kind)."""
        def bad(reason: str) -> object:
            self.fail(path, reason)
            return _INVALID

        if operator in ("exists", "not_exists"):
            if kind == "event":
                if raw is None:
                    return None
                duration = parse_duration(raw)
                return duration if duration is not None else bad(
                    "an optional window such as 'last_7_days' or '12_hours' (minutes, hours, days, weeks)")
            return None if raw is None else bad(f"{operator} takes no value")
        if operator == "at_least":
            count = raw.get("count") if isinstance(raw, dict) and set(raw) == {"count"} else raw
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                return bad("must be {\"count\": N} with N a whole number of at least 1")
            return count
        if operator == "within_last":
            duration = parse_duration(raw)
            return duration if duration is not None else bad(
                "must be a duration such as '30_days' or '12_hours' (minutes, hours, days, weeks)")
        if operator in ("in", "not_in"):
            if not isinstance(raw, list) or not raw:
                return bad("must be a non-empty list of values")
            if len(raw) > MAX_LIST_VALUES:
                return bad(f"at most {MAX_LIST_VALUES} values")
            items = [self.scalar(kind, item, f"{path}.{i}") for i, item in enumerate(raw)]
            if any(item is _INVALID for item in items):
                return _INVALID
            if len({type(item) for item in items}) > 1:
                return bad("values must all be text or all be numbers")
            return tuple(items)
        if operator == "contains":
            return raw if isinstance(raw, str) and raw else bad("must be a non-empty text")
        if operator == "between":
            if not isinstance(raw, list) or len(raw) != 2:
                return bad("must be a list of two values [low, high]")
            low, high = (self.ordered(kind, item, f"{path}.{i}") for i, item in enumerate(raw))
            if low is _INVALID or high is _INVALID:
                return _INVALID
            if type(low) is not type(high):
                return bad("both bounds must be numbers or both dates")
            if isinstance(low, float) and low > high:
                return bad("the low bound is above the high bound")
            if isinstance(low, Instant) and low.at and high.at and low.at > high.at:
                return bad("the low bound is after the high bound")
            if isinstance(low, Instant) and low.at is None and high.at is None \
                    and not (low.today or high.today) and low.seconds_ago < high.seconds_ago:
                return bad("the low bound is after the high bound")
            return (low, high)
        if operator in ("greater_than", "less_than", "before", "after"):
            if operator in ("before", "after") or kind == "time":
                instant = parse_instant(raw)
                return instant if instant is not None else bad(
                    "must be a date ('2024-05-01', ISO 8601) or relative ('30_days_ago', 'now', 'today')")
            return self.ordered(kind, raw, path)
        # equals / not_equals
        return self.scalar(kind, raw, path)

    def scalar(self, kind: Kind | None, raw: Any, path: str) -> Any:
        if kind in ("flag", "presence"):
            if isinstance(raw, bool):
                return raw
            self.fail(path, "must be true or false")
            return _INVALID
        if kind == "time":
            instant = parse_instant(raw)
            if instant is None:
                self.fail(path, "must be a date ('2024-05-01', ISO 8601) or relative ('30_days_ago')")
                return _INVALID
            return instant
        if kind == "number":
            return self.number(raw, path)
        if kind == "text":
            if isinstance(raw, str):
                return raw
            self.fail(path, "must be text")
            return _INVALID
        # Attribute of a kind unknown here: keep a plain JSON scalar, the store checks it.
        if isinstance(raw, bool) or isinstance(raw, str):
            return raw
        if isinstance(raw, (int, float)) and math.isfinite(raw):
            return float(raw)
        self.fail(path, "must be text, a number or true/false")
        return _INVALID

    def ordered(self, kind: Kind | None, raw: Any, path: str) -> Any:
        """A bound for greater_than / less_than / between: a number, or a date on time fields."""
        if kind == "time" or (kind is None and isinstance(raw, str)):
            instant = parse_instant(raw)
            if instant is None:
                self.fail(path, "must be a number, or a date ('2024-05-01', '30_days_ago')"
                          if kind is None else "must be a date ('2024-05-01', ISO 8601) or relative ('30_days_ago')")
                return _INVALID
            return instant
        return self.number(raw, path)

    def number(self, raw: Any, path: str) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            self.fail(path, "must be a number")
            return _INVALID
        return float(raw)


_INVALID = object()


def parse_duration(raw: object) -> timedelta | None:
    """'30_days', '12_hours', 'last_7_days', '1_week' -> timedelta; anything else None."""
    match = _DURATION.match(raw) if isinstance(raw, str) else None
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]]) if match else None


def parse_instant(raw: object) -> Instant | None:
    """'now', 'today', 'N_days_ago' (minutes, hours, days, weeks) or an ISO 8601 date/time (UTC if naive)."""
    if not isinstance(raw, str):
        return None
    if raw == "now":
        return Instant()
    if raw == "today":
        return Instant(today=True, whole_day=True)
    match = _AGO.match(raw)
    if match:  # "equals 3_days_ago" means that UTC day; "equals 2_hours_ago" would never match
        return Instant(seconds_ago=int(match[1]) * _UNITS[match[2]], whole_day=match[2] in ("day", "week"))
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return Instant(at=parsed, whole_day=len(raw) == 10)

"""A brute-force, row-at-a-time model of the audience store and the DSL's semantics.

Deliberately naive (Python dicts and loops, no numpy) so that it can serve as the
reference the columnar engine is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipeline.segments.dsl import Condition, Criteria, Group, parse_instant
from schemas.records import UserEvent, UserProfile


@dataclass
class User:
    profile: UserProfile | None = None
    events: dict[str, list[datetime]] = field(default_factory=dict)


class Oracle:
    def __init__(self) -> None:
        self.users: dict[int, User] = {}

    def apply(self, record: UserProfile | UserEvent) -> None:
        user = self.users.setdefault(record.user_id, User())
        if isinstance(record, UserProfile):
            if user.profile is None or record.updated_at >= user.profile.updated_at:
                user.profile = record
        else:
            user.events.setdefault(record.name, []).append(record.occurred_at)

    def members(self, criteria: Criteria, exclusions: dict, now: datetime) -> list[int]:
        return sorted(uid for uid, user in self.users.items() if self.matches(criteria, uid, user, exclusions, now))

    def matches(self, criteria: Criteria, uid: int, user: User, exclusions: dict, now: datetime) -> bool:
        if not self.group(criteria.root, user, now):
            return False
        for segment_id in criteria.exclude_segments:
            excluded = exclusions[segment_id]
            if isinstance(excluded, Criteria):
                if self.matches(excluded, uid, user, exclusions, now):
                    return False
            elif uid in set(int(i) for i in excluded):
                return False
        return True

    def group(self, group: Group, user: User, now: datetime) -> bool:
        results = (self.group(c, user, now) if isinstance(c, Group) else self.condition(c, user, now)
                   for c in group.conditions)
        return all(results) if group.logic == "AND" else any(results)

    def condition(self, cond: Condition, user: User, now: datetime) -> bool:
        op = cond.operator
        if op.startswith("not_"):
            positive = Condition(cond.field, cond.target, op.removeprefix("not_"), cond.value, cond.raw_value)
            return not self.condition(positive, user, now)
        target = cond.target
        if target.source == "event":
            times = user.events.get(target.name, [])
            if op == "at_least":
                return len(times) >= cond.value
            if cond.value is None:
                return bool(times)
            return bool(times) and max(times) >= now - cond.value
        value = self.value_of(target.source, target.name, user)
        if target.name in ("email", "phone", "push") and target.source == "builtin":
            return bool(value) if op == "exists" else bool(value) == cond.value
        if value is None:
            return False
        if op == "exists":
            return True
        want = cond.value
        if isinstance(value, datetime):
            return self.time(value, op, want, now)
        if isinstance(value, bool):
            return value == want
        if isinstance(value, (int, float)):
            value = float(value)
            return {"equals": lambda: value == want, "in": lambda: value in want,
                    "greater_than": lambda: value > want, "less_than": lambda: value < want,
                    "between": lambda: want[0] <= value <= want[1]}[op]()
        return {"equals": lambda: value == want, "in": lambda: value in want,
                "contains": lambda: want.casefold() in value.casefold()}[op]()

    @staticmethod
    def time(value: datetime, op: str, want, now: datetime) -> bool:
        if op == "within_last":
            return now - want <= value <= now
        if isinstance(want, str):
            want = parse_instant(want)
        if op == "between":
            return want[0].resolve(now) <= value <= want[1].resolve(now)
        at = want.resolve(now)
        if op == "equals":
            if want.whole_day:
                return value.astimezone(timezone.utc).date() == at.astimezone(timezone.utc).date()
            return value == at
        if op in ("greater_than", "after"):
            return value > at
        return value < at

    @staticmethod
    def value_of(source: str, name: str, user: User):
        p = user.profile
        if p is None:
            return None
        if source == "builtin":
            return {"country": p.country, "language": p.language, "timezone": p.timezone,
                    "email": p.email is not None, "phone": p.phone is not None, "push": bool(p.push_tokens),
                    "created_at": p.created_at}[name]
        raw = p.attributes.get(name)
        if isinstance(raw, str) and name.endswith("_date"):
            return datetime.fromisoformat(raw).replace(tzinfo=timezone.utc)
        return raw

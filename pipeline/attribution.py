"""Conversions and their attribution: which campaign a purchase counts for. Pure.

A campaign's goals say which events count as its conversion and for how long after a message:

    "goals": {"conversion_events": ["purchase"], "attribution_window_days": 30}

(both optional: ``purchase`` and 30 days when absent). Every message sent leaves a *touch* on its user:
(campaign, message, channel, variant, step, when). A conversion event on ``user-events`` counts for the
campaign of the user's **last touch** within that campaign's window whose goals name the event
(last-touch attribution), once per user and campaign: it becomes a ``converted`` delivery event of the
touched message, carrying the event's revenue, which the aggregate folds like any other status (once per
message, so a replayed purchase is not counted twice; a user's later purchases are not counted again).

Touches live per user (``schemas.keys.touch_key``): ``campaign id → "<message id>|<channel>|<variant>|<step>|<unix
time>"``, plus ``c<campaign id>`` once the user converted for it. pipeline/attribution_io.py keeps them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timezone
from typing import Any

import orjson

from schemas.messages import DeliveryEvent
from schemas.records import UserEvent

DEFAULT_EVENTS = ("purchase",)
DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 90
TOUCH_TTL_S = (MAX_WINDOW_DAYS + 1) * 86400
CONVERTED_PREFIX = "c"


@dataclass(frozen=True, slots=True)
class Goals:
    events: frozenset[str]
    window_s: float


def goals_of(raw: Mapping[str, Any] | None) -> Goals:
    """A campaign's goals (the validated JSON the API stored), with the defaults filled in."""
    raw = raw or {}
    events = raw.get("conversion_events") or DEFAULT_EVENTS
    days = raw.get("attribution_window_days") or DEFAULT_WINDOW_DAYS
    return Goals(frozenset(str(e) for e in events), float(min(max(days, 0), MAX_WINDOW_DAYS)) * 86400)


def goal_problems(raw: Any) -> list[tuple[str, str]]:
    """(field, why) for each thing wrong in a campaign's ``goals`` (the API answers 422 naming them)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [("goals", "must be an object")]
    out: list[tuple[str, str]] = []
    events = raw.get("conversion_events")
    if events is not None and (not isinstance(events, list) or not events or len(events) > 20
                               or not all(isinstance(e, str) and 0 < len(e) <= 100 for e in events)):
        out.append(("goals.conversion_events", "must be a list of 1 to 20 event names"))
    days = raw.get("attribution_window_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float))
                             or not 0 < days <= MAX_WINDOW_DAYS):
        out.append(("goals.attribution_window_days", f"must be a number of days in (0, {MAX_WINDOW_DAYS}]"))
    return out


# ---------------------------------------------------------------- touches


@dataclass(frozen=True, slots=True)
class Touch:
    campaign_id: int
    message_id: uuid.UUID
    channel: str
    variant: str | None
    step: str
    at: float


def touches_of(events: Iterable[DeliveryEvent]) -> dict[int, dict[str, str]]:
    """The touches a batch of delivery events leaves: user → {campaign id: touch}, the latest per campaign."""
    out: dict[int, dict[str, tuple[float, str]]] = {}
    for e in events:
        if e.status != "sent":
            continue
        at = e.at.timestamp()
        field = str(e.campaign_id)
        user = out.setdefault(e.user_id, {})
        if field not in user or user[field][0] <= at:
            user[field] = (at, f"{e.message_id}|{e.channel}|{e.variant or ''}|{e.step}|{at:.3f}")
    return {u: {f: v for f, (_, v) in fields.items()} for u, fields in out.items()}


def sent_events(values: Iterable[bytes | None]) -> list[DeliveryEvent]:
    """The "sent" events of raw delivery-events values (only those are validated: they are the touches)."""
    out: list[DeliveryEvent] = []
    for value in values:
        if not value or b'"sent"' not in value:
            continue
        try:
            events = orjson.loads(value)["events"]
            out += [DeliveryEvent.model_validate(e) for e in events if e.get("status") == "sent"]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            continue  # the aggregate dead-letters what is not a DeliveryEventBatch
    return out


def parse_touches(raw: Mapping[bytes | str, bytes | str]) -> tuple[list[Touch], set[int]]:
    """A user's stored touches, and the campaigns they already converted for (malformed entries skipped)."""
    touches, converted = [], set()
    for key, value in raw.items():
        key = key.decode() if isinstance(key, bytes) else key
        value = value.decode() if isinstance(value, bytes) else value
        if key.startswith(CONVERTED_PREFIX):
            if key[1:].isdigit():
                converted.add(int(key[1:]))
            continue
        parts = value.split("|")
        if not key.isdigit() or len(parts) != 5:
            continue
        try:
            touches.append(Touch(int(key), uuid.UUID(parts[0]), parts[1], parts[2] or None, parts[3], float(parts[4])))
        except ValueError:
            continue
    return touches, converted


# ---------------------------------------------------------------- attribution


def attribute(event: UserEvent, touches: Iterable[Touch], converted: set[int],
              goals: Mapping[int, Goals]) -> Touch | None:
    """The touch ``event`` converts (last touch within its campaign's window, whose goals name the event,
    not converted yet), or None. ``goals`` holds the campaigns still known (a deleted one has none)."""
    at = event.occurred_at.timestamp()
    best: Touch | None = None
    for touch in touches:
        goal = goals.get(touch.campaign_id)
        if goal is None or event.name not in goal.events or touch.campaign_id in converted:
            continue
        if not 0 <= at - touch.at <= goal.window_s:
            continue
        if best is None or touch.at > best.at:
            best = touch
    return best


def conversion(event: UserEvent, touch: Touch) -> DeliveryEvent:
    """The ``converted`` delivery event of the touched message (its id: a replay is the same event)."""
    return DeliveryEvent(message_id=touch.message_id, campaign_id=touch.campaign_id, user_id=event.user_id,
                         channel=touch.channel, step=touch.step, variant=touch.variant, status="converted",
                         reason=event.name, revenue=float(event.revenue or 0),
                         event_id=str(event.event_id) if event.event_id else None,
                         at=event.occurred_at.astimezone(timezone.utc))


def conversion_names(goals: Iterable[Goals]) -> frozenset[str]:
    """Every event name some campaign's goals count (the rest of user-events is skipped at once)."""
    names: set[str] = set(DEFAULT_EVENTS)
    for goal in goals:
        names |= goal.events
    return frozenset(names)




def might_convert(value: bytes | None, names: frozenset[str]) -> bool:
    """Whether a raw user-events record can be a conversion (its name appears quoted in it): the rest is
    skipped without parsing."""
    return bool(value) and any(f'"{name}"'.encode() in value for name in names)  # type: ignore[operator]


def attribute_all(events: Iterable[UserEvent], stored: Mapping[int, Mapping], goals: Mapping[int, Goals]
                  ) -> list[DeliveryEvent]:
    """The conversions of a batch of candidate events, in order (a user converting twice for a campaign in
    one batch counts once)."""
    parsed = {user: parse_touches(raw) for user, raw in stored.items()}
    out: list[DeliveryEvent] = []
    for event in events:
        touches, converted = parsed.get(event.user_id, ([], set()))
        touch = attribute(event, touches, converted, goals)
        if touch is not None:
            converted.add(touch.campaign_id)
            out.append(conversion(event, touch))
    return out


def touched_campaigns(stored: Mapping[int, Mapping]) -> set[int]:
    return {t.campaign_id for raw in stored.values() for t in parse_touches(raw)[0]}

"""Records of the trigger stages: what ``match_triggers`` and the journey timers tell ``advance_journeys``.

    <rule topics> ─► [match_triggers] ─► journey-signals ─► [advance_journeys] ─► message-requests
    delivery-events (opened, clicked) ───────────────────────┘        ▲
    journey timers (due waits) ─► journey-signals ───────────────────┘

One record carries many users of ONE partition (the partition of each user's key, as on every
delivery topic), so Faust's per-record cost is paid once per batch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.encoding import BIGINT_MAX


class SignalEvent(BaseModel):
    """A user event some flow listens to: an entry rule it matched, or a goal/wait/condition event."""

    u: int = Field(gt=0, le=BIGINT_MAX)  # user id
    n: str  # event name
    t: float  # when it happened (epoch seconds)
    id: str  # the event's stable id (a replay is recognised)
    p: dict[str, Any] = Field(default_factory=dict)  # properties


class JourneySignal(BaseModel):
    """``events``: user events read from ``topic``; ``wake``: users whose timers are due at ``due``."""

    kind: Literal["events", "wake"]
    partition: int = Field(ge=0)
    topic: str | None = None
    events: list[SignalEvent] = Field(default_factory=list)
    users: list[int] = Field(default_factory=list)
    due: float | None = None

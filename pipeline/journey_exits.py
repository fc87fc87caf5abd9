"""Messages of users who left a journey: a goal reached (or the journey stopped) drops what was
already queued for that entry, wherever it waits (message-requests, a quiet-hours deferral, an outbox).

advance_journeys writes ``flow:j{id}:exit:{user}`` = the entry tag (the second the entry began) it ended; a
message of step "<node>@<tag>" for that user, of that entry or an earlier one, is dropped by the gate and,
last, by the sender before its provider call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.keys import flow_exit_key


def journey_flow(journey_id: int | None) -> str | None:
    return f"j{journey_id}" if journey_id else None


def entry_of(step: str) -> int | None:
    """The entry tag of a journey step "<node>@<tag>" (None: not a journey step); as
    ``pipeline.journeys.engine.step_tag``."""
    _, sep, tag = step.rpartition("@")
    return int(tag) if sep and tag.isdigit() else None


async def exited(redis: Any, journey_id: int | None, step: str, user_ids: Sequence[int]) -> set[int]:
    """The users whose entry this step belongs to has ended by a goal or a stop (one MGET)."""
    flow, k = journey_flow(journey_id), entry_of(step)
    if flow is None or k is None or not user_ids:
        return set()
    marks = await redis.mget([flow_exit_key(flow, u) for u in user_ids])
    return {u for u, mark in zip(user_ids, marks) if mark is not None and int(mark) >= k}

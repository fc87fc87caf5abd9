"""match_triggers' decision: which records of the rule topics some flow needs, grouped by the user's
partition. Pure, no I/O.

Most events concern no flow (a product view when only purchases trigger anything): they are
dropped here, after a JSON decode and a dict lookup. An event is forwarded when it matches a live
flow's entry rule (name and property filters), or when members of some flow listen for it (a goal,
a wait for it, a condition on it); advance_journeys then decides per user with their state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from pipeline.journeys.flows import FlowIndex
from pipeline.journeys.rules import Event, event_of
from pipeline.partitioning import user_partitions


@dataclass
class Routed:
    signals: dict[tuple[str, int], list[dict]] = field(default_factory=dict)  # (topic, partition) → events
    bad: list[tuple[int, str]] = field(default_factory=list)  # (index of the record, why it is no event)
    forwarded: int = 0


def route(records: Sequence[tuple[str, bytes | None, bytes | None]], index: FlowIndex, now: float,
          partitions: int) -> Routed:
    """``records``: (topic, key, value). Events some flow needs, as ``SignalEvent`` dicts."""
    out = Routed()
    chosen: list[tuple[str, Event]] = []
    for i, (topic, key, value) in enumerate(records):
        try:
            record = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            out.bad.append((i, "not JSON"))
            continue
        try:
            event = event_of(record, key, now)
            if isinstance(event, str):
                out.bad.append((i, event))
                continue
            if index.forward(topic, event, now):
                chosen.append((topic, event))
        except (TypeError, ValueError, OverflowError) as exc:  # one odd record must not stop the stage
            out.bad.append((i, f"{type(exc).__name__}: {exc}"))
    if not chosen:
        return out
    parts = user_partitions(np.fromiter((e.user_id for _, e in chosen), dtype=np.int64, count=len(chosen)),
                            partitions).tolist()
    for (topic, e), p in zip(chosen, parts):
        out.signals.setdefault((topic, p), []).append({"u": e.user_id, "n": e.name, "t": e.at, "id": e.event_id,
                                                       "p": dict(e.properties)})
    out.forwarded = len(chosen)
    return out

"""replicate_suppressions: delivery-events → the gate's suppression list.

Input: ``delivery-events`` (``DeliveryEventBatch``, on the users' partition like every
pipeline topic). Output: none; writes ``gate_suppressions`` (tables/gate_state.py):
(user, channel) → "bounce" | "complaint" | "permanent_failure" (see
``pipeline.gate.suppression_of``), one table write per touched bucket.
Most batches carry no bounce: a byte test skips them without parsing.
"""

from __future__ import annotations

import orjson

from pipeline import gate as gate_rules
from pipeline.app import app, delivery_events_topic
from tables.gate_state import gate_suppressions

_MARKERS = (b'"bounced"', b"complaint", b"permanent")


@app.agent(delivery_events_topic)
async def replicate_suppressions(stream):
    async for event in stream.events():
        raw = event.value
        if not raw or not any(m in raw for m in _MARKERS):
            continue
        try:
            events = orjson.loads(raw)["events"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # not ours to dead-letter: the aggregate agent owns this topic's errors
        partition = event.message.partition
        found: dict[str, list[tuple[int, str, str]]] = {}
        for e in events:
            reason = gate_rules.suppression_of(e)
            if reason is not None and e.get("user_id") is not None and e.get("channel"):
                key = gate_rules.bucket_key(partition, int(e["user_id"]))
                found.setdefault(key, []).append((int(e["user_id"]), e["channel"], reason))
        for key, entries in found.items():
            gate_suppressions[key] = gate_rules.apply_suppressions(gate_suppressions.get(key), entries)

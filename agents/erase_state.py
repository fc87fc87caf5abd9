"""erase_state: user-erasures → the erased user gone from every Faust table (pipeline/erase.py).

Input: ``user-erasures`` (``UserErasure`` JSON keyed by user id), co-partitioned with every per-user
topic, so this worker owns the user's table state.
Output: none; rewrites the user's buckets of ``gate_preferences``, ``gate_suppressions`` and
``gate_history`` without them (a tombstone reaches the changelog when a bucket empties) and deletes
their ``journey_state`` key (a tombstone). Side effects: marks the erasure row's ``faust_tables``
done in PostgreSQL. At-least-once: a replay finds nothing left to remove and reports done again.
"""

from __future__ import annotations

from pydantic import ValidationError

from agents._io import send_dead_letters
from pipeline import erase as decide
from pipeline import erase_io
from pipeline import gate as gate_rules
from pipeline.app import app, clients, user_erasures_topic
from pipeline.codecs import RawRecord, dead_letter, explain
from schemas.erasure import UserErasure
from tables.gate_state import gate_history, gate_preferences, gate_suppressions
from tables.journey_state import journey_state


@app.agent(user_erasures_topic)
async def erase_state(stream):
    async for event in stream.events():
        message = event.message
        try:
            erasure = UserErasure.model_validate_json(event.value or b"")
        except ValidationError as exc:
            raw = RawRecord(message.topic, message.partition, message.offset, event.key, event.value)
            await send_dead_letters([dead_letter(raw, "erase_state", explain(exc))])
            continue
        key = gate_rules.bucket_key(message.partition, erasure.user_id)
        for table in (gate_preferences, gate_suppressions, gate_history):
            kept = decide.without_user(table.get(key), erasure.user_id)
            if kept == {}:
                del table[key]
            elif kept is not None:
                table[key] = kept
        if journey_state.get(str(erasure.user_id)) is not None:
            del journey_state[str(erasure.user_id)]
        await erase_io.report(await clients.postgres(), erasure.erasure_id, {"faust_tables": decide.DONE})

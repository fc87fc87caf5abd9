"""replicate_preferences: preference-updates → the gate's preference replica.

Input: ``preference-updates`` (``PreferenceUpdate`` JSON keyed by user_id, compacted;
an empty value is a tombstone: the user is gone).
Output: none; writes ``gate_preferences`` (tables/gate_state.py) under the key
"<partition>:<bucket>" of the record's partition — the user's partition, where the
gate reads it. Preference changes are rare, so one table write per record is fine.
Side effects: dead-letters records that fail validation.
"""

from __future__ import annotations

from pydantic import ValidationError

from agents._io import send_dead_letters
from pipeline import gate as gate_rules
from pipeline.app import app, preference_updates_topic
from pipeline.codecs import RawRecord, dead_letter, explain
from schemas.preferences import PreferenceUpdate
from tables.gate_state import gate_preferences


@app.agent(preference_updates_topic)
async def replicate_preferences(stream):
    async for event in stream.events():
        message = event.message
        try:
            if event.value:
                update = PreferenceUpdate.model_validate_json(event.value)
                user_id, state = update.user_id, update.model_dump(mode="json")
            else:
                user_id, state = int(event.key), None
        except (ValidationError, ValueError, TypeError) as exc:
            reason = explain(exc) if isinstance(exc, ValidationError) else f"tombstone without a user id key: {exc}"
            raw = RawRecord(message.topic, message.partition, message.offset, event.key, event.value)
            await send_dead_letters([dead_letter(raw, "replicate_preferences", reason)])
            continue
        key = gate_rules.bucket_key(message.partition, user_id)
        bucket = gate_rules.apply_preference(gate_preferences.get(key), user_id, state)
        if bucket:
            gate_preferences[key] = bucket
        elif key in gate_preferences:  # the last user of the bucket gone (an erasure): a tombstone
            del gate_preferences[key]

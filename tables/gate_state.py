"""The gate's state: three Faust tables, each keyed "<partition>:<bucket of user ids>".

    gate_preferences  replica of preference-updates    writer: agents/replicate_preferences.py
    gate_suppressions bounces and complaints per channel writer: agents/replicate_suppressions.py
    gate_history      24 h dedup marks and cap windows   writer: agents/gate.py

Grouped, not per user: a batch of ~500 users touches a handful of keys, so the
changelog gets a few records per batch (see pipeline/gate.py for the value shapes
and bench/gate.py for what per-user keys cost). The partition in the key is the
Kafka partition of the event that writes it — the user's partition, as every
topic of the pipeline is partitioned by user — and Faust writes the changelog
record to that same partition, so a worker restores exactly the keys of the
partitions it is assigned.

Values are JSON (lists, str keys) so that a value restored from the changelog is
identical to the one written.
"""

from pipeline.app import app
from schemas.topics import GATE_HISTORY, GATE_PREFERENCES, GATE_SUPPRESSIONS


def _table(spec):
    return app.Table(
        spec.table_name,
        default=None,
        partitions=spec.partitions,
        key_type=str,
        value_type=None,
    )


gate_preferences = _table(GATE_PREFERENCES)
gate_suppressions = _table(GATE_SUPPRESSIONS)
gate_history = _table(GATE_HISTORY)

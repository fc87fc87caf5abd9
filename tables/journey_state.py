"""Each user's place in every flow: one Faust table keyed by user id, written by agents/advance_journeys.py.

    journey_state  "<user_id>" → JSON bytes of {"<flow>": member}   (member: pipeline/journeys/engine.py)

Keyed per user, not grouped per bucket as the gate's tables are: a journey moves one user at a
time (an event, a timer), so a bucket would rewrite hundreds of users' state for each move. The
table is written while processing a ``journey-signals`` or ``delivery-events`` record of the
user's partition, so Faust writes the changelog record to that partition and a restarted worker
restores exactly the users of the partitions it is assigned.

Values are the JSON bytes themselves (``value_type=bytes``: the changelog's raw codec), decoded when a
user moves, written as an exact-size copy (``pipeline.journeys_io.packed``): a parked user costs one bytes
object of ~120 bytes and its key, and nothing the garbage collector walks. Measured with 200,000 users
(the engine and this encoding, without Faust): ~310 bytes traced, ~620 bytes of RSS a user; a dict of lists a user
held ~9 KB of RSS in bench/triggers.py, and orjson's own bytes keep a ~4 KB buffer each.
"""

import json

from faust.serializers.codecs import Codec

from pipeline.app import app
from schemas.topics import JOURNEY_STATE


class UserKey(Codec):
    """The table's keys in the changelog, as Faust's JSON codec writes them ("\"123\"", so a changelog
    written before reads the same), without orjson: Faust's codec returns orjson's bytes, each holding
    the ~4 KB buffer it was written into for as long as the changelog record waits in Faust's producer
    buffer (measured while parking 200,000 users: 47,000 of them, 184 MiB a worker)."""

    def _dumps(self, s: object) -> bytes:
        if isinstance(s, str) and s.isdigit():
            return b'"' + s.encode() + b'"'
        return json.dumps(s).encode()

    def _loads(self, s: bytes) -> object:
        return json.loads(s)


journey_state = app.Table(
    JOURNEY_STATE.table_name,
    default=None,
    partitions=JOURNEY_STATE.partitions,
    key_type=str,
    value_type=bytes,
)
journey_state.key_serializer = journey_state.changelog_topic.key_serializer = UserKey()  # Faust has no argument for it

"""A stored (static or lookalike) segment's members, read from PostgreSQL ``segment_members``.

Used by the API (exclusions, lookalike seeds) and the explode stage (a launch's audience).
"""

from __future__ import annotations

import asyncpg
import numpy as np


async def member_ids(conn: asyncpg.Connection, segment_id: int) -> np.ndarray:
    """A stored segment's members as a sorted int64 array, in one round trip of packed bytes."""
    packed = await conn.fetchval(
        "SELECT coalesce(string_agg(int8send(user_id), ''::bytea ORDER BY user_id), ''::bytea)"
        " FROM segment_members WHERE segment_id = $1",
        segment_id,
    )
    return np.frombuffer(packed, dtype=">i8").astype(np.int64)

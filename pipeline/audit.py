"""The audit trail's writer: who changed what, with the entity before and after.

Every mutation calls ``record`` on the connection of its own transaction, so the change and
its audit row commit together or not at all. The API and the stages that
change a campaign on their own (the aggregate completing one) write through this one function.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg
from schemas.encoding import to_json


class Actor(Protocol):
    """Who acted: an API key (``api.auth.Caller`` is one)."""

    key_id: int | None
    name: str


async def record(
    conn: asyncpg.Connection,
    actor: Actor | str | None,
    action: str,
    entity_type: str,
    entity_id: object,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Append one audit row.

    ``actor`` is the API key behind the request, a name for an actor without a key
    (``"unsubscribe-link"``: the signed token was the authority), or None for
    Herald itself (the admin key bootstrap, a campaign completed by the aggregate).
    """
    await record_many(conn, actor, action, entity_type, [(entity_id, before, after)])


async def record_many(
    conn: asyncpg.Connection,
    actor: Actor | str | None,
    action: str,
    entity_type: str,
    changes: list[tuple[object, dict[str, Any] | None, dict[str, Any] | None]],
) -> None:
    """Append one audit row per (entity id, before, after), in one round trip (``record``'s rules)."""
    if isinstance(actor, str):
        key_id, name = None, actor
    else:
        key_id, name = (actor.key_id, actor.name) if actor else (None, "herald")
    await conn.executemany(
        "INSERT INTO audit_log (actor_key_id, actor, action, entity_type, entity_id, before, after)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
        [(key_id, name, action, entity_type, None if entity_id is None else str(entity_id),
          None if before is None else to_json(before), None if after is None else to_json(after))
         for entity_id, before, after in changes],
    )

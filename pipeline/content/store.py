"""Templates in PostgreSQL: the one query that loads one, shared by the API and the senders."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from schemas.encoding import from_json, is_bigint_id

COLUMNS = (
    "template_id, name, description, channel, category, parts, default_language, translations, variants,"
    " variables, created_by, created_at, updated_at"
)
_JSON_COLUMNS = ("parts", "translations", "variants", "variables")


def template_record(row: asyncpg.Record) -> dict[str, Any]:
    """A row as ``GET /api/v1/templates/{id}`` returns it (timestamps in ISO 8601)."""
    record = dict(row)
    for name in _JSON_COLUMNS:
        record[name] = from_json(record[name])
    for name, value in record.items():
        if isinstance(value, datetime):
            record[name] = value.isoformat()
    return record


async def get_template(conn: asyncpg.Connection | asyncpg.Pool, template_id: int) -> dict[str, Any] | None:
    """The template ``template_id`` (channel, parts, translations, variants, variables...), or None."""
    if not is_bigint_id(template_id):
        return None
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM templates WHERE template_id = $1", template_id)
    return None if row is None else template_record(row)

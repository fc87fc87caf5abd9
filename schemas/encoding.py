"""How records and JSON travel, written once: the record encoder, the JSON(B) helpers, the id bound.

- ``encode(record)``: a pydantic record as the JSON bytes every topic carries.
- ``to_json(value)`` / ``from_json(value)``: a value to the text PostgreSQL's JSONB takes, and back
  (asyncpg hands JSONB over as text unless the pool installed a codec; ``from_json`` accepts both).
- ``BIGINT_MAX``: the largest id PostgreSQL's ``bigint`` holds; every id Herald accepts is in 1..BIGINT_MAX.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

BIGINT_MAX = 2**63 - 1


def encode(record: BaseModel) -> bytes:
    return orjson.dumps(record.model_dump(mode="json"))


def to_json(value: Any) -> str:
    """JSON text for a JSONB parameter (orjson writes datetimes as ISO 8601)."""
    return orjson.dumps(value).decode()


def from_json(value: Any) -> Any:
    """A JSONB column's value, whether asyncpg handed it over as text or already decoded."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def is_bigint_id(value: int) -> bool:
    """Whether ``value`` is an id PostgreSQL can hold (1..BIGINT_MAX)."""
    return 0 < value <= BIGINT_MAX

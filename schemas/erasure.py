"""The record of ``user-erasures``: one person to erase from the Faust tables (pipeline/erase.py).

Keyed by user id like every per-user topic, so it reaches the worker that owns the user's partition
and with it the user's table state.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from schemas.encoding import BIGINT_MAX


class UserErasure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    erasure_id: UUID
    user_id: int = Field(gt=0, le=BIGINT_MAX)

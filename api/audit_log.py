"""``GET /api/v1/audit``: read the audit trail, newest first, with filters.

    GET /api/v1/audit?entity_type=campaign&entity_id=42&since=2026-11-01T00:00:00Z&limit=50
    -> {"entries": [{audit_id, actor, actor_key_id, action, entity_type, entity_id,
                     before, after, occurred_at}, ...], "next_cursor": "1234" | null}

Filters are exact matches (``since`` inclusive, ``until`` exclusive, on
``occurred_at``); pages follow ``audit_id`` downwards, so rows appended while
someone pages never shift a page. ``next_cursor`` is opaque: pass it back as
``cursor`` with the same filters. An unknown parameter is a 422, so a typo
cannot silently widen a search.

Admins and analysts may read it; marketers may not: the trail holds every
API key issued and every person's unsubscribe history, more than authoring
campaigns needs.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import require_role
from api.errors import ApiError, FieldProblem, invalid
from api.openapi import LIMIT, STR, operation

_COLUMNS = "audit_id, actor, actor_key_id, action, entity_type, entity_id, before, after, occurred_at"


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity_type: str | None = Field(default=None, max_length=50)
    entity_id: str | None = Field(default=None, max_length=100)
    actor: str | None = Field(default=None, max_length=255)
    action: str | None = Field(default=None, max_length=100)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, pattern=r"^[1-9][0-9]{0,18}$", description="next_cursor of a page")

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A time without a zone is read as UTC, as everything Herald stores is.
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


class AuditEntry(BaseModel):
    audit_id: int
    actor: str
    actor_key_id: int | None
    action: str
    entity_type: str
    entity_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    occurred_at: datetime


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None = Field(description="Pass as cursor for the next (older) page; null on the last")


def _query(request: Request) -> AuditQuery:
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in params:
            raise ApiError(422, "validation_error", f"invalid value for {name}",
                           [FieldProblem(field=name, reason="given more than once")])
        params[name] = value
    try:
        return AuditQuery.model_validate(params)
    except ValidationError as exc:
        raise invalid(exc) from None


def where_clause(query: AuditQuery) -> tuple[str, list[Any]]:
    """The SQL conditions and their parameters ($1, $2, ...) for a query's filters."""
    conditions: list[str] = []
    args: list[Any] = []
    for column in ("entity_type", "entity_id", "actor", "action"):
        value = getattr(query, column)
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    for column, operator, value in (
        ("occurred_at", ">=", query.since),
        ("occurred_at", "<", query.until),
        ("audit_id", "<", int(query.cursor) if query.cursor else None),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} {operator} ${len(args)}")
    return (" WHERE " + " AND ".join(conditions)) if conditions else "", args


@require_role("admin", "analyst")
@operation("The audit trail", responses={200: AuditPage},
           query={**{name: STR for name in AuditQuery.model_fields}, "limit": {**LIMIT, "maximum": 500}})
async def list_audit(request: Request) -> Response:
    """Who changed what and when, newest first, filtered by entity, actor, action and time.

    Query parameters: entity_type, entity_id, actor, action, since, until
    (ISO 8601), limit (1 to 500, default 50) and cursor (a page's next_cursor).
    """
    query = _query(request)
    where, args = where_clause(query)
    rows = await request.app.state.postgres.fetch(
        f"SELECT {_COLUMNS} FROM audit_log{where} ORDER BY audit_id DESC LIMIT {query.limit + 1}", *args
    )
    entries = [
        AuditEntry(
            **{
                **dict(row),
                "before": orjson.loads(row["before"]) if row["before"] else None,
                "after": orjson.loads(row["after"]) if row["after"] else None,
            }
        )
        for row in rows[: query.limit]
    ]
    next_cursor = str(entries[-1].audit_id) if len(rows) > query.limit else None
    return JSONResponse(AuditPage(entries=entries, next_cursor=next_cursor).model_dump(mode="json"))


routes = [Route("/api/v1/audit", list_audit, methods=["GET"])]

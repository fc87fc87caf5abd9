"""A campaign's analytics: ``GET /api/v1/campaigns/{id}/analytics``.

    ?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD   UTC days, both included (at most 366); without them, the
                                                 campaign's whole life from its live totals
    ?interval=minute|hour|day                    adds a time series (minute counts are kept 3 days)
    ?opens=human|all                             which opens the rates count (people's by default)

The answer has the spec's shape (``metrics``, ``rates``, ``revenue``, ``channel_breakdown``) plus ``cost``,
``variant_breakdown`` and ``series``. Everything is read from the aggregate's Redis counters (the live totals
and the per-hour and per-minute counts the same fold writes, pipeline/metrics.py), so it is as live as the
counters: a delivery event is in the answer once the aggregate folded it. The arithmetic is
pipeline/analytics.py's.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import ROLES, require_role
from api.errors import ApiError, FieldProblem
from api.openapi import STR, operation
from pipeline import analytics
from schemas.encoding import BIGINT_MAX, from_json
from schemas.keys import NO_VARIANT, hour_metrics_key, metrics_key, minute_metrics_key, variant_metrics_key

KNOWN_PARAMS = frozenset({"start_date", "end_date", "interval", "opens"})


class View(BaseModel):
    metrics: dict[str, int]
    rates: dict[str, float | None]
    revenue: dict[str, float | None]
    cost: float


class Analytics(View):
    campaign_id: int
    start_date: str | None
    end_date: str | None
    opens: str
    channel_breakdown: dict[str, View]
    variant_breakdown: dict[str, View]
    series: dict[str, Any] | None


ROWS_TTL_S = 5.0
ROWS_KEPT = 10_000


async def _campaign(request: Request, campaign_id: int):
    """The campaign's channels, variants and times, read at most every ``ROWS_TTL_S`` (a dashboard polls)."""
    state = request.app.state
    rows: dict = getattr(state, "analytics_rows", None) or {}
    state.analytics_rows = rows
    now = time.monotonic()
    hit = rows.get(campaign_id)
    if hit is not None and now - hit[0] < ROWS_TTL_S:
        return hit[1]
    row = await state.postgres.fetchrow(
        "SELECT campaign_id, channels, ab_test_config, created_at, launched_at FROM campaigns"
        " WHERE campaign_id = $1", campaign_id)
    if len(rows) >= ROWS_KEPT:
        rows.clear()
    rows[campaign_id] = (now, row)
    return row


def _variants(row) -> list[str]:
    config = from_json(row["ab_test_config"]) or {}
    ids = [str(v.get("id")) for v in config.get("variants") or [] if isinstance(v, dict) and v.get("id")]
    return ids or [NO_VARIANT]


async def _live_cells(redis, campaign_id: int, channels: list[str], variants: list[str]) -> tuple[dict, analytics.Cell]:
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(metrics_key(campaign_id))
    pairs = [(ch, v) for ch in channels for v in variants]
    for ch, v in pairs:
        pipe.hgetall(variant_metrics_key(campaign_id, ch, None if v == NO_VARIANT else v))
    totals, *cells = await pipe.execute()
    return analytics.counts(totals), {pair: analytics.counts(raw) for pair, raw in zip(pairs, cells) if raw}


async def _units(redis, campaign_id: int, units: list[int], minute: bool) -> dict[int, analytics.Cell]:
    if not units:
        return {}
    key = minute_metrics_key if minute else hour_metrics_key
    pipe = redis.pipeline(transaction=False)
    for unit in units:
        pipe.hgetall(key(campaign_id, unit))
    raws = await pipe.execute()
    return {unit: analytics.fold_series([raw]) for unit, raw in zip(units, raws) if raw}


@require_role(*ROLES)
@operation("Campaign analytics", responses={200: Analytics},
           query={name: STR for name in sorted(KNOWN_PARAMS)})
async def campaign_analytics(request: Request) -> Response:
    """Metrics, rates, revenue and breakdowns by channel and variant, over a date range, with a time series."""
    campaign_id = request.path_params["campaign_id"]
    params = request.query_params
    unknown = sorted(set(params) - KNOWN_PARAMS)
    if unknown:
        raise ApiError(422, "validation_error", "unknown query parameters",
                       fields=[FieldProblem(field=name, reason="is not a parameter of this endpoint")
                               for name in unknown])
    row = await _campaign(request, campaign_id) if campaign_id <= BIGINT_MAX else None
    if row is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}")
    now = datetime.now(timezone.utc)
    born = row["created_at"] or row["launched_at"] or now
    opens = params.get("opens") or "human"
    query, problems = analytics.parse_query(params.get("start_date"), params.get("end_date"), params.get("interval"),
                                            params.get("opens"), born, now)
    if query is None:
        raise ApiError(422, "validation_error", "the query is not valid",
                       fields=[FieldProblem(field=f, reason=r) for f, r in problems])
    redis = request.app.state.redis
    channels = list(row["channels"] or [])
    if query.ranged:
        hours = await _units(redis, campaign_id, analytics.span(query, born, now, 3600), minute=False)
        cells = analytics.merge(hours.values())
        totals = analytics.total(cells)
    else:
        totals, cells = await _live_cells(redis, campaign_id, channels, _variants(row))
    body: dict[str, Any] = {
        "campaign_id": campaign_id,
        "start_date": query.start.date().isoformat() if query.ranged else None,
        "end_date": (query.end - timedelta(days=1)).date().isoformat() if query.ranged else None,
        "opens": opens,
        **analytics.view(totals, opens),
        "channel_breakdown": {ch: analytics.view(m, opens) for ch, m in sorted(analytics.by(cells, 0).items())},
        "variant_breakdown": {v: analytics.view(m, opens) for v, m in sorted(analytics.by(cells, 1).items())
                              if v != NO_VARIANT},
        "series": None,
    }
    if query.interval:
        minute = query.interval == "minute"
        unit_s = 60 if minute else 3600
        per_unit = await _units(redis, campaign_id, analytics.span(query, born, now, unit_s), minute)
        body["series"] = {"interval": query.interval,
                          "points": analytics.series(per_unit, unit_s, query.interval, opens)}
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


routes = [Route("/api/v1/campaigns/{campaign_id:int}/analytics", campaign_analytics, methods=["GET"])]

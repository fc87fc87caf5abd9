"""The realtime dashboard: its figures as JSON and as server-sent events, and the page that shows them.

    GET /api/v1/dashboard/realtime          the spec's shape (active campaigns, sent today, sending now,
                                            current rate, top campaigns) plus channels and the last hour
    GET /api/v1/dashboard/realtime/stream   the same, as an ``event: realtime`` every ``STREAM_EVERY_S``
    GET /dashboard                          the page (api/static/dashboard.html): no build step; it asks for
                                            an API key, keeps it for the browser tab, and follows the stream

Figures come from the aggregate's counters in Redis (pipeline/dashboard.py), campaigns' names and the active
count from PostgreSQL (cached for ``CAMPAIGNS_TTL_S``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from api.auth import ROLES, require_role
from api.openapi import operation
from pipeline import dashboard
from schemas.keys import dashboard_day_key, dashboard_minute_key, dashboard_top_key, metrics_key

STATIC = Path(__file__).parent / "static"
STREAM_EVERY_S = 1.0
CAMPAIGNS_TTL_S = 5.0


async def _campaigns(request: Request, ids: list[int]) -> tuple[int, dict[int, dict[str, Any]]]:
    state = request.app.state
    cached = getattr(state, "dashboard_campaigns", None)
    now = time.monotonic()
    if cached is None or now - cached[0] > CAMPAIGNS_TTL_S or not set(ids) <= cached[2].keys():
        pool = state.postgres
        active = await pool.fetchval("SELECT count(*) FROM campaigns WHERE status = 'active'")
        rows = await pool.fetch("SELECT campaign_id, name, status, channels FROM campaigns"
                                " WHERE campaign_id = ANY($1::bigint[])", ids)
        cached = state.dashboard_campaigns = (now, active, {r["campaign_id"]: dict(r) for r in rows})
    return cached[1], cached[2]


async def realtime_figures(request: Request) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    minute = int(now.timestamp() // 60)
    minutes = list(range(minute - dashboard.MINUTES + 1, minute + 1))
    redis = request.app.state.redis
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(dashboard_day_key(minute // 1440))
    pipe.zrevrange(dashboard_top_key(minute // 1440), 0, 3 * dashboard.TOP - 1, withscores=True)  # some deleted
    for m in minutes:
        pipe.hgetall(dashboard_minute_key(m))
    today, top_raw, *per_minute = await pipe.execute()
    top = [(int(cid), score) for cid, score in top_raw]
    pipe = redis.pipeline(transaction=False)
    for cid, _ in top:
        pipe.hgetall(metrics_key(cid))
    live = dict(zip((cid for cid, _ in top), await pipe.execute()))
    active, rows = await _campaigns(request, [cid for cid, _ in top])
    return dashboard.realtime(now, active, today, zip(minutes, per_minute), top, rows, live)


@require_role(*ROLES)
@operation("Realtime dashboard", responses={200: "application/json"})
async def realtime(request: Request) -> Response:
    """Active campaigns, messages sent today and being sent now, the current rate, top campaigns, channels."""
    body = await realtime_figures(request)
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


async def _stream(request: Request) -> AsyncIterator[bytes]:
    yield b": connected\n\n"
    while True:
        started = time.monotonic()
        yield b"event: realtime\ndata: " + orjson.dumps(await realtime_figures(request)) + b"\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(max(0.0, STREAM_EVERY_S - (time.monotonic() - started)))


@require_role(*ROLES)
@operation("Realtime dashboard stream", responses={200: "text/event-stream"})
async def realtime_stream(request: Request) -> Response:
    """Server-sent events: the realtime figures as an ``event: realtime`` every second."""
    return StreamingResponse(_stream(request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@operation("The dashboard page", responses={200: "text/html"})
async def page(request: Request) -> Response:
    """The live dashboard (HTML; it asks for an API key and reads the API with it)."""
    return FileResponse(STATIC / "dashboard.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy":
                                 "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self'"})


@operation("The dashboard page's script", responses={200: "text/javascript"})
async def script(request: Request) -> Response:
    """The page's one script (no build step, no third-party code)."""
    return FileResponse(STATIC / "dashboard.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"})


routes = [
    Route("/api/v1/dashboard/realtime", realtime, methods=["GET"]),
    Route("/api/v1/dashboard/realtime/stream", realtime_stream, methods=["GET"]),
    Route("/dashboard", page, methods=["GET"]),
    Route("/dashboard/dashboard.js", script, methods=["GET"]),
]

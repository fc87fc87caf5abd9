"""Request metrics for Prometheus, and ``GET /metrics`` to scrape them.

Requests are labelled by route template (``/api/v1/api-keys/{key_id:int}``),
never by raw path: one series per endpoint, however many ids are requested.
Paths that match no route share the label ``unmatched``, so a scanner cannot
grow the series count either.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.openapi import operation

REQUESTS = Counter(
    "herald_api_requests_total", "HTTP requests answered by the API", ["method", "route", "status"]
)
LATENCY = Histogram(
    "herald_api_request_duration_seconds",
    "Time from request to the end of the response",
    ["method", "route"],
    # Tighter than the default buckets: the target is a P95 under 200 ms.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0),
)


class MetricsMiddleware:
    """Counts every HTTP request and observes its latency (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server error handler answers 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The router records the matched route in the scope it was handed (this one).
            route = scope.get("route")
            template = route.path if isinstance(route, Route) else "unmatched"
            method = scope["method"]
            REQUESTS.labels(method, template, str(status)).inc()
            LATENCY.labels(method, template).observe(time.perf_counter() - started)


@operation("Prometheus metrics", responses={200: "text/plain"})
async def metrics(request: Request) -> Response:
    """Scraped by Prometheus; needs no key, like /healthz, and holds no campaign data."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]

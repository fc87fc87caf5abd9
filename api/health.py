"""``GET /healthz``: can this API process reach each of its servers right now?

Each check is a real round trip on the client the API itself uses (not a
fresh connection), so a broken pool shows up here before it shows up in
campaign requests. The checks run concurrently, each bounded by
``settings.health_timeout_s``, so a hung server costs one timeout, not four.
A load balancer reads the status code (200 or 503); a person reads "down".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.openapi import operation
from pipeline.probes import probe_kafka
from pipeline.stores.cassandra import run_async


class Check(BaseModel):
    ok: bool
    latency_ms: float
    version: str | None = None
    error: str | None = None


class HealthReport(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, Check]
    down: list[str]


async def postgres_version(state: State) -> str:
    version = await state.postgres.fetchval("SHOW server_version")
    return version.split()[0]  # "15.18 (Debian 15.18-0+deb12u1)" -> "15.18"


async def redis_version(state: State) -> str:
    await state.redis.ping()
    return (await state.redis.info("server"))["redis_version"]


async def cassandra_version(state: State) -> str:
    rows = await run_async(state.cassandra, "SELECT release_version FROM system.local")
    return rows[0].release_version


async def kafka_version(state: State) -> str:
    # A metadata request through the producer's own connections proves it can
    # publish; the ApiVersions probe reports what the broker runs.
    settings = state.settings
    _, version = await asyncio.gather(
        state.kafka.client.fetch_all_metadata(),
        asyncio.to_thread(probe_kafka, settings.kafka_host, settings.kafka_port, settings.health_timeout_s),
    )
    return version


async def forget_idle_connections(state: State, server: str) -> None:
    """After a failed check, drop idle pooled connections so none outlives the outage.

    Both clients already discard a connection that fails mid-command; this
    also covers connections that sat idle while the server restarted.
    """
    if server == "postgres":
        await state.postgres.expire_connections()
    elif server == "redis":
        await state.redis.connection_pool.disconnect(inuse_connections=False)


CHECKS: dict[str, Callable[[State], Awaitable[str]]] = {
    "postgres": postgres_version,
    "redis": redis_version,
    "cassandra": cassandra_version,
    "kafka": kafka_version,
}


async def run_check(state: State, server: str, timeout_s: float) -> Check:
    started = time.perf_counter()
    try:
        version = await asyncio.wait_for(CHECKS[server](state), timeout_s)
    except Exception as exc:
        error = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        await forget_idle_connections(state, server)
        return Check(ok=False, latency_ms=_ms_since(started), error=error)
    return Check(ok=True, latency_ms=_ms_since(started), version=version)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


@operation("Health of the API and its servers", responses={200: HealthReport, 503: HealthReport})
async def healthz(request: Request) -> Response:
    """Used by load balancers and `make run`: 503 as soon as any server is unreachable."""
    state = request.app.state
    results = await asyncio.gather(*(run_check(state, s, state.settings.health_timeout_s) for s in CHECKS))
    checks = dict(zip(CHECKS, results, strict=True))
    down = [server for server, check in checks.items() if not check.ok]
    report = HealthReport(status="degraded" if down else "ok", checks=checks, down=down)
    return JSONResponse(
        report.model_dump(exclude_none=True),
        status_code=503 if down else 200,
        headers={"Cache-Control": "no-store"},
    )


routes = [Route("/healthz", healthz, methods=["GET"])]

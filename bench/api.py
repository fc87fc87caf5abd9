"""Latency of the campaign and segment endpoints under 200 concurrent requests.

    .venv/bin/python bench/api.py [--requests 4000] [--concurrency 200] [--workers 2] [--rate R]

Starts ``--workers`` API processes (uvicorn, one per free port; the client
spreads requests over them round robin), makes what the reads need (an admin key in a private temporary
``local_dir``, a static segment of fresh users, a template if the templates
API is there, and campaigns), then drives each endpoint in turn with
``--concurrency`` requests in flight (aiohttp, one pooled session of that
many connections) and prints one JSON line:

    {"concurrency": 200, "endpoints": {"get_campaign": {"p50_ms": .., "p95_ms": .., "p99_ms": .., "rps": ..,
     "errors": 0}, ...}, "targets": {...}, "unavailable": [...], ...}

Endpoints that do not exist yet (404/405 from the router) are listed under
"unavailable" rather than measured. Closed loop: with C requests in flight,
latency ≈ C / throughput, so the figures measure the server's throughput as
much as its service time; ``--concurrency 1`` shows the service time alone.
The load generator shares the machine's cores with the server.

Why not ``uvicorn --workers N``: uvicorn then binds the socket itself with
protocol 0, so asyncio does not set TCP_NODELAY on accepted connections, and
each response (headers and body written separately by the h11 server) waits
out the client's 40 ms delayed ACK: every request took 44-48 ms here at any
load. One process per port keeps asyncio's TCP_NODELAY.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from api.keys import bootstrap_admin_key  # noqa: E402
from config import get_settings  # noqa: E402

TARGETS_MS = {"reads_p95": 20.0, "create_campaign_p95": 50.0}
READS = ("get_campaign", "list_campaigns", "get_segment", "estimate_segment")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the API exited with {proc.returncode} before it was ready")
            try:
                async with session.get(f"{base}/api/v1/openapi.json") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the API did not become ready")


async def static_segment(dsn: str, size: int) -> int:
    """A static segment over ``size`` fresh users (ids above 10**12), made directly in PostgreSQL."""
    conn = await asyncpg.connect(dsn)
    try:
        base = 10**12 + random.randrange(10**14)
        ids = list(range(base, base + size))
        await conn.copy_records_to_table("users", records=[(i, f"bench{i}@example.com") for i in ids],
                                         columns=["user_id", "email"])
        segment_id = await conn.fetchval(
            "INSERT INTO segments (name, criteria, dynamic, size) VALUES ($1, '{}'::jsonb, false, $2)"
            " RETURNING segment_id", f"bench-api-{base}", size)
        await conn.copy_records_to_table("segment_members", records=[(segment_id, i) for i in ids],
                                         columns=["segment_id", "user_id"])
        return segment_id
    finally:
        await conn.close()


async def try_post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict | None]:
    async with session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as r:
        raw = await r.read()
        return r.status, orjson.loads(raw) if raw else None


async def setup(base: str, key: str, dsn: str, campaigns: int) -> tuple[dict, list[str]]:
    """Create what the endpoints read; returns request factories per endpoint and notes."""
    notes: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        # A dynamic segment through the segments API if it is there; a static one in PostgreSQL otherwise.
        criteria = {"conditions": [{"field": "country", "operator": "equals", "value": "US"}], "logic": "AND"}
        status, body = await try_post(session, f"{base}/api/v1/segments",
                                      {"name": f"bench-{random.randrange(10**9)}", "criteria": criteria,
                                       "dynamic": True})
        if status == 201 and body:
            segment_id = body["segment_id"]
            notes.append("segment created through POST /api/v1/segments (dynamic)")
        else:
            segment_id = await static_segment(dsn, 1000)
            notes.append(f"segments API answered {status} to create; used a static segment of 1000 users")

        content = {"email": {"subject": "Hi {{ first_name }}", "html": "<p>Use {{ code }}</p>",
                             "variables": {"code": "BENCH"}},
                   "push": {"title": "Sale", "body": "Get 50% off now"}}
        status, body = await try_post(session, f"{base}/api/v1/templates", {
            "name": f"bench-{random.randrange(10**9)}", "channel": "email",
            "parts": {"subject": "Hello {{ first_name }}", "html": "<p>{{ code }}</p>"}})
        if status == 201 and body:
            content["email"] = {"template_id": body["template_id"], "variables": {"code": "BENCH"}}
            notes.append("email content from a template made through POST /api/v1/templates")
        else:
            notes.append(f"templates API answered {status}; campaigns use inline content")

        def campaign_body() -> dict:
            return {"name": f"bench-{random.randrange(10**12)}", "type": "immediate", "channels": ["email", "push"],
                    "target_segment_id": segment_id, "content": content,
                    "budget": {"max_spend": 1000, "currency": "USD"},
                    "ab_test": {"enabled": True, "variants": [{"id": "A", "weight": 50}, {"id": "B", "weight": 50}]}}

        ids = []
        for _ in range(campaigns):
            status, body = await try_post(session, f"{base}/api/v1/campaigns", campaign_body())
            if status != 201:
                raise SystemExit(f"could not create a campaign: {status} {body}")
            ids.append(body["campaign_id"])

    factories = {
        "get_campaign": lambda: ("GET", f"/api/v1/campaigns/{random.choice(ids)}", None),
        "list_campaigns": lambda: ("GET", "/api/v1/campaigns?limit=20", None),
        "get_segment": lambda: ("GET", f"/api/v1/segments/{segment_id}", None),
        "estimate_segment": lambda: ("POST", "/api/v1/segments/estimate", {"criteria": criteria}),
        "create_campaign": lambda: ("POST", "/api/v1/campaigns", campaign_body()),
    }
    return factories, notes


async def drive(bases: list[str], key: str, factory, requests: int, concurrency: int, rate: float = 0) -> dict:
    """Closed loop (``rate`` 0): ``concurrency`` clients, each sends its next request when
    the last one answers. Open loop (``rate`` > 0): requests are due at a fixed rate, up
    to ``concurrency`` in flight, and each latency counts from when the request was due,
    so a server that falls behind is charged for the queue it causes."""
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    remaining = iter(range(requests))

    async def one_request(session: aiohttp.ClientSession, i: int, due: float) -> None:
        base = bases[i % len(bases)]
        method, path, body = factory()
        try:
            async with session.request(method, base + path, data=orjson.dumps(body) if body else None) as r:
                await r.read()
                status = r.status
        except aiohttp.ClientError as exc:  # counted, not fatal: the figures say how many
            status = exc.__class__.__name__
        latencies.append((time.perf_counter() - due) * 1000)
        statuses[status] = statuses.get(status, 0) + 1

    async def one_client(session: aiohttp.ClientSession) -> None:
        for i in remaining:
            await one_request(session, i, time.perf_counter())

    async def open_loop(session: aiohttp.ClientSession, started: float) -> None:
        in_flight = asyncio.Semaphore(concurrency)

        async def bounded(i: int, due: float) -> None:
            async with in_flight:
                await one_request(session, i, due)

        tasks = []
        for i in range(requests):
            due = started + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(bounded(i, due)))
        await asyncio.gather(*tasks)

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        started = time.perf_counter()
        if rate > 0:
            await open_loop(session, started)
        else:
            await asyncio.gather(*(one_client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "errors": sum(n for s, n in statuses.items() if not isinstance(s, int) or s >= 400),
        "statuses": {str(s): n for s, n in sorted(statuses.items(), key=str)},
    }


async def probe(base: str, key: str, factory) -> int:
    method, path, body = factory()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.request(method, base + path, data=orjson.dumps(body) if body else None,
                                   headers={"Content-Type": "application/json"}) as r:
            await r.read()
            return r.status


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per endpoint")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0,
                        help="open loop: requests per second (0: closed loop, --concurrency clients back to back)")
    parser.add_argument("--workers", type=int, default=2, help="API processes, one uvicorn per port")
    parser.add_argument("--campaigns", type=int, default=200, help="campaigns created for the reads")
    parser.add_argument("--endpoints", default="get_campaign,list_campaigns,get_segment,estimate_segment,"
                        "create_campaign")
    args = parser.parse_args()

    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as local_dir:
        key = await bootstrap_admin_key(settings.model_copy(update={"local_dir": Path(local_dir)}))
        procs, bases = [], []
        log = open(Path(local_dir) / "api.log", "wb")
        for _ in range(args.workers):
            port = free_port()
            bases.append(f"http://127.0.0.1:{port}")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning", "--no-access-log"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # The closed loop asks one admin key for several thousand requests/s, above its default
                # limit (api/ratelimit.py): raised, so the limiter's Redis call is measured, not its 429s.
                env={**os.environ, "HERALD_API_RATE_LIMITS": "admin=100000,marketer=100000,analyst=100000"},
            ))
        try:
            for base, proc in zip(bases, procs):
                await wait_ready(base, proc)
            factories, notes = await setup(bases[0], key, settings.postgres_dsn, args.campaigns)
            results: dict[str, dict] = {}
            unavailable: list[str] = []
            for name in args.endpoints.split(","):
                status = await probe(bases[0], key, factories[name])
                if status in (404, 405) and name in ("get_segment", "estimate_segment"):
                    unavailable.append(f"{name} (answered {status})")
                    continue
                await drive(bases, key, factories[name], min(200, args.requests), args.concurrency)  # warm-up
                results[name] = await drive(bases, key, factories[name], args.requests, args.concurrency, args.rate)
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()

    reads = [results[n]["p95_ms"] for n in READS if n in results]
    met = {
        "reads_p95": bool(reads) and max(reads) <= TARGETS_MS["reads_p95"],
        "create_campaign_p95": "create_campaign" in results
        and results["create_campaign"]["p95_ms"] <= TARGETS_MS["create_campaign_p95"],
    }
    print(orjson.dumps({
        "concurrency": args.concurrency, "rate": args.rate or "closed loop", "requests_per_endpoint": args.requests, "api_workers": args.workers,
        "cpus": os.cpu_count(), "endpoints": results, "unavailable": unavailable,
        "targets_ms": TARGETS_MS, "targets_met": met, "notes": notes,
    }).decode())


if __name__ == "__main__":
    asyncio.run(main())

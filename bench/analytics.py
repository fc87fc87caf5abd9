"""Analytics under load: delivery and engagement events in, a worker SIGKILLed in the middle, the API read live.

    flock /tmp/herald-integration.lock .venv/bin/python bench/analytics.py                # 10,000 events/s, 60 s
    flock /tmp/herald-integration.lock .venv/bin/python bench/analytics.py --rate 2000 --seconds 10   # quick

What it does: ``--campaigns`` campaigns (PostgreSQL rows, email and sms, variants A and B) get delivery events
on ``delivery-events`` at ``--rate`` events/s for ``--seconds``, as the senders and the callback endpoints
produce them (``DeliveryEventBatch`` records of 50 events on the users' partitions): every message is sent,
most delivered, some bounced, opened (by people and by machines), clicked and converted with revenue, and 5 %
of the records are produced twice (a stage's replay). ``--workers`` workers fold them; one is SIGKILLed at
half time and started again. Meanwhile a poller reads the first campaign's analytics every 50 ms:

    lag     from the moment the k-th "sent" of that campaign was produced to the first answer counting k
            (measured for every 10th); also without the seconds after the SIGKILL that the group needs to
            notice the dead worker (``lag_p99_outside_failover_s``: samples produced before the kill or
            10 s after it; ``lag_p99_before_kill_s``: the steady state, before any worker died)
    lost / double_counted   the Redis totals of every campaign against the distinct (message, status) pairs
            produced, after the input is drained
    api_p95_ms  open-loop GETs of the analytics (campaigns in turn, half with a range and an hourly series) at
            ``--api-rate`` requests/s for ``--api-seconds``, once every consumer of delivery-events caught up
            (``api_busy_p95_ms``: the same right after the counters drained, while the message_log consumer
            still writes the feed to Cassandra); latency from the scheduled start of each request, so a slow
            API cannot hide its queue; the API runs in a uvicorn process of its own
    cpu_pct_*   CPU of each kind of process (percent of one core) during the feed and the API load

Prints ONE JSON line: {"events", "lag_p50_s", "lag_p99_s", "double_counted", "lost", "api_p95_ms", ...}.
Needs the stack up and no other worker (run it under ``flock /tmp/herald-integration.lock``); removes its
campaigns and their Redis keys at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # before anything else: bench/pipeline.py would shadow the pipeline package

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402
from redis import asyncio as aioredis  # noqa: E402

from bench.pipeline import start_worker, stop, wait_group_stable  # noqa: E402
from config import get_settings  # noqa: E402
from pipeline.partitioning import user_key  # noqa: E402
from schemas import keys  # noqa: E402
from schemas.messages import message_id  # noqa: E402
from schemas.topics import DELIVERY_EVENTS  # noqa: E402
from tests.helpers.api import new_key  # noqa: E402

BATCH = 50
COUNTED = ("sent", "delivered", "bounced", "opened", "machine_opened", "clicked", "converted")


def say(message: str) -> None:
    print(f"[analytics {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def message_events(cid: int, user: int, channel: str, variant: str, rng: random.Random, at: str) -> list[dict]:
    """What one message goes through: sent, then delivered or bounced, then maybe opens, a click, a purchase."""
    mid = str(message_id(cid, user, channel))
    base = {"message_id": mid, "campaign_id": cid, "user_id": user, "channel": channel, "variant": variant,
            "step": "send", "at": at}
    out = [{**base, "status": "sent", "cost": 0.001}]
    if rng.random() < 0.03:
        return out + [{**base, "status": "bounced", "reason": "550 no such user"}]
    out.append({**base, "status": "delivered"})
    if channel == "email" and rng.random() < 0.15:
        out.append({**base, "status": "opened", "machine": True})
    if rng.random() < 0.35:
        out.append({**base, "status": "opened"})
        if rng.random() < 0.3:
            out.append({**base, "status": "clicked", "reason": "https://shop.example/"})
            if rng.random() < 0.2:
                out.append({**base, "status": "converted", "revenue": round(rng.uniform(5, 200), 2)})
    return out


def expected_of(events: list[dict], into: dict[int, Counter], revenue: dict[int, float]) -> None:
    for e in events:
        status = "machine_opened" if e.get("machine") else e["status"]
        into[e["campaign_id"]][status] += 1
        revenue[e["campaign_id"]] += e.get("revenue", 0.0)


async def make_campaigns(dsn: str, n: int, run: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.fetchval(
            "INSERT INTO campaigns (name, type, status, channels, ab_test_config, launched_at)"
            " VALUES ($1, 'immediate', 'active', $2, $3::jsonb, now()) RETURNING campaign_id",
            f"bench-analytics-{run}-{i}", ["email", "sms"],
            orjson.dumps({"enabled": True, "variants": [{"id": "A", "weight": 50}, {"id": "B", "weight": 50}]}).decode())
            for i in range(n)]
    finally:
        await conn.close()


async def drop_campaigns(settings, ids: list[int]) -> None:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        await conn.execute("DELETE FROM campaigns WHERE campaign_id = ANY($1::bigint[])", ids)
    finally:
        await conn.close()
    redis = aioredis.from_url(settings.redis_url)
    try:
        for cid in ids:
            found = [k async for k in redis.scan_iter(keys.campaign_pattern(cid), count=10_000)]
            for i in range(0, len(found), 1000):
                await redis.delete(*found[i:i + 1000])
            await redis.srem(keys.OPEN_CAMPAIGNS, cid)
    finally:
        await redis.aclose()


async def feed(settings, campaigns: list[int], rate: float, seconds: float, seed: int, probe: list[tuple[int, float]],
               kill_at: float, kill) -> tuple[int, dict[int, Counter], dict[int, float]]:
    """Produce at ``rate`` events/s; ``probe`` gets (k, produced at) for every 10th "sent" of campaigns[0]."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, acks=1, linger_ms=5,
                                max_batch_size=1 << 20)
    await producer.start()
    expected: dict[int, Counter] = {c: Counter() for c in campaigns}
    revenue: dict[int, float] = {c: 0.0 for c in campaigns}
    produced = 0
    sent_first = 0
    user = 9 * 10**12 + rng.randrange(10**9) * 1000
    started = time.monotonic()
    killed = False
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            if not killed and elapsed >= kill_at:
                kill()
                killed = True
            target = int(elapsed * rate)
            pending = []
            while produced < target:
                user += 1
                events: list[dict] = []
                at = datetime.now(timezone.utc).isoformat()
                while len(events) < BATCH:
                    cid = campaigns[rng.randrange(len(campaigns))]
                    channel = "email" if rng.random() < 0.8 else "sms"
                    events += message_events(cid, user, channel, rng.choice("AB"), rng, at)
                    user += 1
                expected_of(events, expected, revenue)
                value = orjson.dumps({"events": events})
                pending.append(await producer.send(DELIVERY_EVENTS.name, value, key=user_key(user)))
                if rng.random() < 0.05:  # a replayed record
                    pending.append(await producer.send(DELIVERY_EVENTS.name, value, key=user_key(user)))
                produced += len(events)
                first = sum(1 for e in events if e["campaign_id"] == campaigns[0] and e["status"] == "sent")
                for k in range(sent_first + 1, sent_first + first + 1):
                    if k % 10 == 0:
                        probe.append((k, time.time()))
                sent_first += first
            for future in pending:
                await future
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()
    return produced, expected, revenue


async def poll_lag(url: str, key: str, cid: int, probe: list[tuple[int, float]], stop_at: asyncio.Event
                   ) -> list[tuple[float, float]]:
    """(produced at, lag) of every probe."""
    lags: list[tuple[float, float]] = []
    done = 0
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
        while True:
            try:
                answer = (await http.get(f"/api/v1/campaigns/{cid}/analytics")).json()
                sent, now = answer["metrics"]["sent"], time.time()
                while done < len(probe) and probe[done][0] <= sent:
                    lags.append((probe[done][1], now - probe[done][1]))
                    done += 1
            except (httpx.HTTPError, KeyError):
                pass
            if stop_at.is_set() and done >= len(probe):
                return lags
            await asyncio.sleep(0.05)


async def load_api(url: str, key: str, campaigns: list[int], rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop: request i starts at i / rate, whatever happened to the others (aiohttp: its pool stays cheap
    with many requests waiting). Returns the latencies of the 200s and how many were not 200."""
    today = datetime.now(timezone.utc).date().isoformat()
    latencies: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                     connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal failed
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            cid = campaigns[i % len(campaigns)]
            params = {"start_date": today, "end_date": today, "interval": "hour"} if i % 2 else {}
            try:
                async with http.get(f"/api/v1/campaigns/{cid}/analytics", params=params) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append(time.perf_counter() - due)
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            failed += 1

        tasks = []
        for i in range(int(rate * seconds)):  # created as they come due: no thousands of sleepers at once
            await asyncio.sleep(max(0.0, start + i / rate - 0.05 - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return latencies, failed


def start_api(settings, port: int) -> subprocess.Popen:
    """The API in a process of its own (as ``make run`` runs it), so the load generator does not share its GIL."""
    log = open(settings.local_dir / "logs" / "bench-analytics-api.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", "--no-access-log"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "HERALD_API_KEY_CACHE_S": "60"})


def wait_api(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("the API did not start")


async def totals(settings, campaigns: list[int]) -> dict[int, dict[str, float]]:
    redis = aioredis.from_url(settings.redis_url)
    try:
        return {c: {k.decode(): float(v) for k, v in (await redis.hgetall(keys.metrics_key(c))).items()}
                for c in campaigns}
    finally:
        await redis.aclose()


async def drained(settings, campaigns, expected, timeout_s: float) -> dict[int, dict[str, float]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await totals(settings, campaigns)
        if all(got[c].get(s, 0) >= n for c in campaigns for s, n in expected[c].items()) \
                or time.monotonic() > deadline:
            return got
        await asyncio.sleep(1.0)


ROLES = {"workers": "pipeline.worker", "cassandra": "CassandraDaemon", "kafka": "kafka.Kafka",
         "redis": "redis-server", "postgres": "postgres", "api": "uvicorn", "bench": "bench/analytics.py"}
CLK = os.sysconf("SC_CLK_TCK")


def cpu_by_role() -> dict[str, int]:
    """CPU ticks so far (utime + stime) of every process, summed by what it is (``ROLES``)."""
    out = dict.fromkeys(ROLES, 0)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for role, needle in ROLES.items():
            if needle in cmdline:
                out[role] += int(fields[11]) + int(fields[12])
                break
    return out


def cpu_pct(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    return {role: round(100.0 * (after[role] - before[role]) / CLK / seconds, 1) for role in ROLES}


async def wait_caught_up(settings, suffixes: tuple[str, ...], timeout_s: float) -> float:
    """Seconds until every group of ``suffixes`` has committed the end of delivery-events (or the timeout)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, group_id=None)
    await admin.start()
    await consumer.start()
    started = time.monotonic()
    try:
        tps = [TopicPartition(DELIVERY_EVENTS.name, p) for p in range(settings.topic_partitions)]
        while time.monotonic() - started < timeout_s:
            ends = await consumer.end_offsets(tps)
            behind = 0
            for suffix in suffixes:
                committed = await admin.list_consumer_group_offsets(settings.app_id + suffix)
                behind += sum(ends[tp] - committed[tp].offset for tp in tps if tp in committed)
            if behind <= 0:
                break
            await asyncio.sleep(1.0)
        return round(time.monotonic() - started, 1)
    finally:
        await consumer.stop()
        await admin.close()


def pct(values, q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 3) if len(values) else None


def run(args: argparse.Namespace) -> dict:
    settings = get_settings()
    (settings.local_dir / "logs").mkdir(parents=True, exist_ok=True)
    run_id = f"{random.randrange(16**6):06x}"
    campaigns = asyncio.run(make_campaigns(settings.postgres_dsn, args.campaigns, run_id))
    procs = [start_worker({}, i) for i in range(args.workers)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = start_api(settings, port)
    url = f"http://127.0.0.1:{port}"
    figures: dict = {"rate": args.rate, "seconds": args.seconds, "workers": args.workers, "campaigns": len(campaigns)}
    try:
        key = asyncio.run(new_key(settings, "analyst"))
        wait_api(url)
        for suffix in (".aggregate",):
            asyncio.run(wait_group_stable(settings, settings.app_id + suffix, timeout_s=180, members=args.workers))
        say(f"workers ready; campaigns {campaigns[0]}..{campaigns[-1]}")

        killed_at: list[float] = []

        def kill() -> None:
            killed_at.append(time.time())
            victim = procs[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            say(f"SIGKILLed worker {victim.pid}; starting another")
            procs[0] = start_worker({}, 0)

        async def main() -> tuple:
            probe: list[tuple[int, float]] = []
            stop_at = asyncio.Event()
            poller = asyncio.create_task(poll_lag(url, key, campaigns[0], probe, stop_at))
            cpu0, t0 = cpu_by_role(), time.monotonic()
            produced, expected, revenue = await feed(settings, campaigns, args.rate, args.seconds, args.seed, probe,
                                                     args.seconds / 2, kill)
            figures["cpu_pct_during_feed"] = cpu_pct(cpu0, cpu_by_role(), time.monotonic() - t0)
            say(f"produced {produced} events; draining")
            got = await drained(settings, campaigns, expected, args.drain)
            stop_at.set()
            try:
                lags = await asyncio.wait_for(poller, timeout=30)
            except asyncio.TimeoutError:
                lags = []
            return produced, expected, revenue, got, lags

        produced, expected, revenue, got, lags = asyncio.run(main())
        lost = sum(max(0, n - got[c].get(s, 0)) for c in campaigns for s, n in expected[c].items())
        double = sum(max(0, got[c].get(s, 0) - n) for c in campaigns for s, n in expected[c].items())
        revenue_gap = round(sum(abs(got[c].get("revenue", 0) - revenue[c]) for c in campaigns), 4)
        say(f"folded; lags measured {len(lags)}; loading the API at {args.api_rate}/s while the log catches up")
        busy, busy_failed = asyncio.run(load_api(url, key, campaigns, args.api_rate, args.api_seconds))
        figures["caught_up_s"] = asyncio.run(wait_caught_up(settings, (".aggregate", ".message_log", ".touches"),
                                                            args.drain))
        say(f"every delivery-events consumer caught up; loading the API at {args.api_rate}/s again")
        cpu0, t0 = cpu_by_role(), time.monotonic()
        latencies, api_failed = asyncio.run(load_api(url, key, campaigns, args.api_rate, args.api_seconds))
        figures["cpu_pct_during_api_load"] = cpu_pct(cpu0, cpu_by_role(), time.monotonic() - t0)
        figures["api_busy_p95_ms"] = round(1000 * pct(busy, 95), 1) if busy else None
        figures["api_busy_failed"] = busy_failed
        all_lags = [lag for _, lag in lags]
        outside = [lag for at, lag in lags if not killed_at or not killed_at[0] <= at < killed_at[0] + 10]
        figures.update({
            "events": produced, "lag_p50_s": pct(all_lags, 50), "lag_p99_s": pct(all_lags, 99),
            "lag_max_s": round(max(all_lags), 3) if all_lags else None, "lag_samples": len(all_lags),
            "lag_p99_outside_failover_s": pct(outside, 99),
            "lag_p99_before_kill_s": pct([lag for at, lag in lags if killed_at and at < killed_at[0]], 99),
            "double_counted": double, "lost": lost, "revenue_gap": revenue_gap,
            "api_p50_ms": round(1000 * pct(latencies, 50), 1) if latencies else None,
            "api_p95_ms": round(1000 * pct(latencies, 95), 1) if latencies else None,
            "api_requests": len(latencies), "api_failed": api_failed, "api_rate": args.api_rate,
            "expected": {s: sum(expected[c][s] for c in campaigns) for s in COUNTED},
            "workers_alive": sum(1 for p in procs if p.poll() is None),
        })
        return figures
    finally:
        stop(api)
        for p in procs:
            stop(p)
        asyncio.run(drop_campaigns(settings, campaigns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000.0, help="delivery and engagement events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--campaigns", type=int, default=20)
    parser.add_argument("--drain", type=float, default=180.0, help="seconds to wait for the counts after the feed")
    parser.add_argument("--api-rate", type=float, default=500.0)
    parser.add_argument("--api-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    figures = run(parser.parse_args())
    print(orjson.dumps(figures).decode(), flush=True)


if __name__ == "__main__":
    main()

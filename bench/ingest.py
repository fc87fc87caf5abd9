"""Profiles per second from Kafka into PostgreSQL, through the real ingest_profiles agent.

    .venv/bin/python bench/ingest.py --profiles 1000000 [--workers 2]

Produces N fresh profiles to ``user-profiles`` first (timed apart as ``produce_s``),
then starts ``--workers`` Faust worker processes and times from the moment their
ingest consumer group is stable until all N rows are in PostgreSQL, so the figure
is the ingest stage's own rate, not the test producer's. Prints one JSON line:
``{"profiles": N, "seconds": S, "per_s": R, ...}``. Needs the stack up (``make up``)
and no other Herald worker running (it would share the partitions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import demo  # noqa: E402
from config import get_settings  # noqa: E402
from schemas.topics import USER_PROFILES  # noqa: E402

COUNTRIES = [("US", "en", "America/New_York"), ("GB", "en-GB", "Europe/London"), ("DE", "de", "Europe/Berlin"),
             ("FR", "fr", "Europe/Paris"), ("BR", "pt-BR", "America/Sao_Paulo"), ("JP", "ja", "Asia/Tokyo")]


def profiles(base: int, count: int, seed: int = 7):
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).isoformat()
    for i in range(count):
        user_id = base + i
        country, language, tz = COUNTRIES[rng.randrange(len(COUNTRIES))]
        yield str(user_id).encode(), orjson.dumps({
            "user_id": user_id, "email": f"user{user_id}@example.com", "phone": f"+1555{user_id % 10**7:07d}",
            "first_name": "Sam", "last_name": "Lee", "country": country, "language": language, "timezone": tz,
            "attributes": {"plan": rng.choice(["free", "pro", "enterprise"]),
                           "lifetime_value": round(rng.lognormvariate(4, 1.2), 2),
                           "purchase_count": rng.randrange(0, 30)},
            "updated_at": now,
        })


async def count_rows(pool: asyncpg.Pool, base: int, count: int) -> int:
    return await pool.fetchval("SELECT count(*) FROM users WHERE user_id >= $1 AND user_id < $2", base, base + count)


async def produce(settings, base: int, n: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, linger_ms=20,
                                max_batch_size=1_048_576, max_request_size=4_194_304, acks=1)
    await producer.start()
    try:
        started = time.perf_counter()
        partitions = {USER_PROFILES.name: sorted(await producer.partitions_for(USER_PROFILES.name))}
        batches = demo.PartitionBatches(producer, partitions)
        for key, value in profiles(base, n):
            await batches.add(USER_PROFILES.name, key, value)
        await batches.flush()
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def wait_for_group(settings, expect_members: int, timeout_s: float = 60) -> None:
    """Wait until the ingest_profiles consumer group is stable with one member per worker."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            [group] = await admin.describe_consumer_groups([f"{settings.app_id}.ingest_profiles"])
            state, members = group.groups[0][2], group.groups[0][5]
            if state == "Stable" and len(members) == expect_members:
                return
            await asyncio.sleep(0.05)
        raise SystemExit("workers did not join the consumer group in time")
    finally:
        await admin.close()


async def run(n: int, workers: int) -> dict:
    settings = get_settings()
    log_dir = settings.local_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=2)
    base = int(time.time() * 1000) * 1000  # fresh ids every run
    produce_s = await produce(settings, base, n)
    procs = []
    for i in range(workers):
        with open(log_dir / f"bench-worker-{i}.log", "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pipeline.worker", "worker", "-l", "warn", "--without-web"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        await wait_for_group(settings, workers)
        started = time.perf_counter()
        while (stored := await count_rows(pool, base, n)) < n:
            if time.perf_counter() - started > 1800:
                raise SystemExit(f"only {stored} of {n} stored after 30 minutes")
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
        return {"profiles": n, "seconds": round(seconds, 2), "per_s": round(n / seconds),
                "workers": workers, "produce_s": round(produce_s, 2),
                "partitions": settings.topic_partitions, "batch": settings.worker_batch_size}
    finally:
        await pool.close()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args.profiles, args.workers))).decode(), flush=True)


if __name__ == "__main__":
    main()

"""GDPR erasure under load: erase users through the API while an in-app campaign sends to them.

    .venv/bin/python bench/erase.py --erase 10000 [--keep 10000] [--concurrency 16]

``--erase + --keep`` users are inserted straight into PostgreSQL into one static segment; one in-app
campaign over all of them is launched through the real API (served by uvicorn in this process), and
at once ``--erase`` of them (every other id) are erased with ``DELETE /api/v1/users/{id}``,
``--concurrency`` requests in flight. One Faust worker runs the pipeline and the erasures' table
part (agents/erase_state.py). In-app needs no provider peer: its messages land in Redis inboxes.

Prints one JSON line ``{"erased", "p99_s", "leftover_rows", "sent_after_erase", ...}``:
p99_s is an erasure's time from request to done (every store, the worker's tables included: the
erasures row's requested_at → done_at); leftover_rows counts what still names an erased user once
the campaign completed (PostgreSQL users / preferences / segment members, Cassandra message_log rows
and index rows, Redis inbox and touch keys); sent_after_erase counts "sent" delivery events of an
erased user later than their erasure's done_at. Needs the stack up and no other Herald worker running.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from api.app import create_app  # noqa: E402
from config import get_settings  # noqa: E402
from pipeline import erase  # noqa: E402
from pipeline.metrics import log_shard  # noqa: E402
from pipeline.pii_keys import pii_keyring  # noqa: E402
from pipeline.stores.cassandra import connect, run_async  # noqa: E402
from schemas import keys  # noqa: E402
from schemas.topics import DELIVERY_EVENTS  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_pipeline", REPO / "bench" / "pipeline.py")
bench_pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_pipeline)


async def make_audience(dsn: str, base: int, n: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        ids = range(base, base + n)
        keyring = pii_keyring(get_settings())
        await conn.copy_records_to_table(
            "users", columns=["user_id", "email_enc", "email_idx", "phone_enc", "phone_idx", "first_name", "language",
                              "timezone"],
            records=((u, *bench_pipeline.sealed_contacts(keyring, f"e{u}@bench.example"), "Ann", "en", "UTC")
                     for u in ids))
        segment_id = await conn.fetchval("INSERT INTO segments (name, criteria, dynamic, size) VALUES"
                                         " ($1, '{}'::jsonb, false, $2) RETURNING segment_id", f"bench-erase-{base}", n)
        await conn.copy_records_to_table("segment_members", columns=["segment_id", "user_id"],
                                         records=((segment_id, u) for u in ids))
        return segment_id
    finally:
        await conn.close()


async def erase_all(url: str, key: str, user_ids: list[int], concurrency: int) -> dict[int, str]:
    gate = asyncio.Semaphore(concurrency)
    out: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        async def one(uid: int) -> None:
            async with gate:
                response = await client.delete(f"/api/v1/users/{uid}")
                assert response.status_code == 202, response.text
                out[uid] = response.json()["erasure_id"]

        await asyncio.gather(*(one(u) for u in user_ids))
    return out


async def wait_done(dsn: str, ids: list[str], timeout_s: float = 1800) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await conn.fetch("SELECT user_id, requested_at, done_at, stores FROM erasures"
                                    " WHERE erasure_id = ANY($1::uuid[])", ids)
            if all(r["done_at"] for r in rows) and len(rows) == len(ids):
                return rows
            if time.monotonic() > deadline:
                pending = [orjson.loads(r["stores"]) for r in rows if not r["done_at"]][:3]
                raise SystemExit(f"erasures not done: {pending}")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def leftovers(settings, erased: list[int], campaign_id: int) -> dict[str, int]:
    """What still names an erased user, per store."""
    conn = await asyncpg.connect(settings.postgres_dsn)
    found: dict[str, int] = {}
    try:
        for table in ("users", "user_preferences", "segment_members", "unsubscribes"):
            found[table] = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = ANY($1::bigint[])", erased)
    finally:
        await conn.close()
    cluster, session = connect(settings)
    ks = settings.cassandra_keyspace
    try:
        day = datetime.now(timezone.utc).date()
        index = session.prepare(f"SELECT user_id FROM {ks}.message_log_by_user WHERE user_bucket = ? AND user_id = ?")
        log = session.prepare(f"SELECT user_id FROM {ks}.message_log WHERE campaign_id = ? AND day = ? AND shard = ?"
                              " AND user_id = ? ALLOW FILTERING")
        for i in range(0, len(erased), 64):
            chunk = erased[i:i + 64]
            rows = await asyncio.gather(
                *(run_async(session, index, (erase.user_bucket(u), u)) for u in chunk),
                *(run_async(session, log, (campaign_id, day, log_shard(u), u)) for u in chunk))
            counts = [len(list(r)) for r in rows]
            found["message_log_by_user"] = found.get("message_log_by_user", 0) + sum(counts[:len(chunk)])
            found["message_log"] = found.get("message_log", 0) + sum(counts[len(chunk):])
    finally:
        await asyncio.to_thread(cluster.shutdown)
    import redis.asyncio as aioredis

    redis = aioredis.from_url(settings.redis_url)
    try:
        for i in range(0, len(erased), 1000):
            chunk = erased[i:i + 1000]
            found["inbox"] = found.get("inbox", 0) + await redis.exists(*[keys.inbox_key(u) for u in chunk])
            found["touch"] = found.get("touch", 0) + await redis.exists(*[keys.touch_key(u) for u in chunk])
    finally:
        await redis.aclose()
    return found


async def sent_after(settings, before: dict, campaign_id: int, done_at: dict[int, float]) -> tuple[int, int]:
    """("sent" events of erased users later than their erasure's done, those refused with reason erased)."""
    from tests.helpers.kafka import end_offsets, read

    end = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    records = await read(settings.kafka_brokers, before, stop_at=end, timeout_s=300,
                         keep=lambda r: isinstance(r.value, dict) and "events" in r.value)
    late = refused = 0
    for r in records:
        for e in r.value["events"]:
            if e["campaign_id"] != campaign_id or e["user_id"] not in done_at:
                continue
            if e["status"] == "sent" and datetime.fromisoformat(e["at"]).timestamp() > done_at[e["user_id"]]:
                late += 1
            if e["status"] == "suppressed" and e.get("reason") == erase.ERASED_REASON:
                refused += 1
    return late, refused


def run(erase_n: int, keep_n: int, concurrency: int) -> dict:
    from tests.helpers.api import new_key, serve
    from tests.helpers.kafka import end_offsets

    settings = get_settings()
    (settings.local_dir / "logs").mkdir(parents=True, exist_ok=True)
    base = 6 * 10**12 + random.randrange(10**6) * 10**7
    n = erase_n + keep_n
    segment_id = asyncio.run(make_audience(settings.postgres_dsn, base, n))
    stride = max(1, n // erase_n)
    erased = [base + i for i in range(0, n, stride)][:erase_n]
    worker = bench_pipeline.start_worker({"HERALD_RATE_IN_APP": "1000000"}, 0)
    url, stop_api = serve(create_app(settings.model_copy(update={"api_key_cache_s": 0})), "bench-erase-api")
    try:
        for suffix in bench_pipeline.PIPELINE_GROUPS:
            asyncio.run(bench_pipeline.wait_group_stable(settings, settings.app_id + suffix, members=1, timeout_s=30))
        admin = asyncio.run(new_key(settings, "admin"))
        marketer = asyncio.run(new_key(settings, "marketer"))
        before = asyncio.run(end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name))
        body = {"name": f"bench-erase-{base}", "type": "immediate", "channels": ["in_app"],
                "target_segment_id": segment_id, "content": {"in_app": {"title": "Bench", "body": "Hello"}}}
        headers = {"Authorization": f"Bearer {marketer}"}
        campaign_id = httpx.post(f"{url}/api/v1/campaigns", json=body, headers=headers, timeout=30).json()["campaign_id"]
        launched = httpx.post(f"{url}/api/v1/campaigns/{campaign_id}/launch", headers=headers, timeout=30)
        assert launched.status_code in (200, 202), launched.text
        started = time.perf_counter()
        ids = asyncio.run(erase_all(url, admin, erased, concurrency))
        requests_s = time.perf_counter() - started
        rows = asyncio.run(wait_done(settings.postgres_dsn, list(ids.values())))
        all_done_s = time.perf_counter() - started
        deadline = time.monotonic() + 1800
        while asyncio.run(bench_pipeline.campaign_states(settings.postgres_dsn, [campaign_id]))[campaign_id] != "completed":
            assert time.monotonic() < deadline, "campaign not completed"
            time.sleep(0.5)
        time.sleep(3)  # the aggregate's last message_log writes
        latencies = np.array([(r["done_at"] - r["requested_at"]).total_seconds() for r in rows])
        done_at = {r["user_id"]: r["done_at"].timestamp() for r in rows}
        leftover = asyncio.run(leftovers(settings, erased, campaign_id))
        late, refused = asyncio.run(sent_after(settings, before, campaign_id, done_at))
    finally:
        stop_api()
        bench_pipeline.stop(worker)
    return {"erased": len(rows), "p99_s": round(float(np.percentile(latencies, 99)), 3),
            "leftover_rows": sum(leftover.values()), "sent_after_erase": late,
            "leftover_by_store": {k: v for k, v in leftover.items() if v},
            "p50_s": round(float(np.percentile(latencies, 50)), 3), "erasures_per_s": round(len(rows) / all_done_s, 1),
            "requests_s": round(requests_s, 1), "refused_by_gate": refused, "recipients": n,
            "concurrency": concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--erase", type=int, default=10_000)
    parser.add_argument("--keep", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(orjson.dumps(run(args.erase, args.keep, args.concurrency)).decode())


if __name__ == "__main__":
    main()

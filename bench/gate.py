"""Users per second through the gate, with its state, on private topics.

    .venv/bin/python bench/gate.py --users 200000 --workers 1 --shift 9    # grouped state (the design)
    .venv/bin/python bench/gate.py --users 200000 --workers 1 --shift 0    # one table key per user (before)

Starts ``--workers`` Faust workers that run ONLY the gate and its state agents
(tables/gate_state.py, agents/gate.py, replicate_*, release_deferred) under a private
app id, so their consumer group, changelogs and topics (``<app_id>-message-requests``,
``-outbox.email``, ``-delivery-events``, ...) are the bench's own and no sender or
other helper's worker sees the records. Users above 10**12 with an email address go
into PostgreSQL, a campaign with a budget (so the Lua reservation runs per batch);
batches of ``--batch`` users per partition, as explode makes them. The clock runs
from the first record published to the last delivery event read. Everything it
created is removed afterwards. Prints one JSON line.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from schemas import keys  # noqa: E402
from schemas.topics import DEAD_LETTERS, DELIVERY_EVENTS, MESSAGE_REQUESTS, OUTBOX, PREFERENCE_UPDATES  # noqa: E402


def serve(prefix: str, shift: int, profile: str | None = None) -> None:
    """A worker process of the bench: the gate's modules only, on the bench's topics."""
    import pipeline.app as pa
    from pipeline import gate as gate_rules

    gate_rules.BUCKET_SHIFT = shift
    P = pa.settings.topic_partitions
    pa.app.conf.autodiscover = False
    pa.message_requests_topic = pa.app.topic(f"{prefix}{MESSAGE_REQUESTS.name}", partitions=P)
    pa.delivery_events_topic = pa.app.topic(f"{prefix}{DELIVERY_EVENTS.name}", partitions=P)
    pa.preference_updates_topic = pa.app.topic(f"{prefix}{PREFERENCE_UPDATES.name}", partitions=P)
    pa.dead_letters_topic = pa.app.topic(f"{prefix}{DEAD_LETTERS.name}", partitions=P)
    pa.outbox_topics.clear()
    pa.outbox_topics.update({ch: pa.app.topic(f"{prefix}{OUTBOX[ch].name}", partitions=P) for ch in ("email", "sms")})
    import agents.gate  # noqa: F401  (registers the agents on the patched topics)
    import agents.release_deferred  # noqa: F401
    import agents.replicate_preferences  # noqa: F401
    import agents.replicate_suppressions  # noqa: F401

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    if profile:  # where a worker's time goes: cProfile stats written when it stops
        import atexit
        import cProfile
        prof = cProfile.Profile()
        atexit.register(lambda: prof.dump_stats(profile))
        prof.enable()
    pa.app.main()


async def run(args) -> dict:
    import asyncpg
    import orjson
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from config import get_settings
    from pipeline.partitioning import user_partitions
    import numpy as np

    app_id = f"herald-bench-gate-{os.getpid()}"
    prefix = f"{app_id}-"
    # Synthetic users record no consent and the bench runs at any hour: no SMS opt-in or SMS quiet hours.
    env = dict(os.environ, HERALD_APP_ID=app_id, PYTHONUNBUFFERED="1", HERALD_GATE_OPT_IN_CHANNELS="",
               HERALD_GATE_CHANNEL_QUIET_HOURS="")
    settings = get_settings()
    P = settings.topic_partitions
    topics = {f"{prefix}{t.name}": False for t in (MESSAGE_REQUESTS, DELIVERY_EVENTS, PREFERENCE_UPDATES,
                                             DEAD_LETTERS, OUTBOX["email"], OUTBOX["sms"])}
    topics |= {f"{app_id}-{t}-changelog": True for t in ("gate_preferences", "gate_suppressions", "gate_history")}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    await admin.create_topics([NewTopic(n, P, 1, topic_configs={"cleanup.policy": "compact" if c else "delete"})
                               for n, c in topics.items()])

    base = random.randrange(10**12, 9 * 10**15)
    uids = np.arange(base, base + args.users, dtype=np.int64)
    parts = user_partitions(uids, P)
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=2)
    rds = aioredis.from_url(settings.redis_url)
    procs: list[subprocess.Popen] = []
    cid = None
    try:
        await pool.copy_records_to_table(
            "users", records=[(int(u), f"b{u}@bench.test", "UTC") for u in uids],
            columns=["user_id", "email", "timezone"])
        cid = await pool.fetchval(
            "INSERT INTO campaigns (name, type, status, channels, budget) VALUES ($1, 'immediate', 'active',"
            " '{email}', $2::jsonb) RETURNING campaign_id", app_id,
            orjson.dumps({"max_spend": 10.0**9, "currency": "USD"}).decode())
        await rds.set(keys.status_key(cid), "active")

        log_dir = settings.local_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for w in range(args.workers):
            with open(log_dir / f"bench-gate-w{w}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--serve", "--prefix", prefix, "--shift", str(args.shift)]
                    + (["--profile", args.profile] if args.profile and w == 0 else []),
                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, linger_ms=5,
                                    max_request_size=4_194_304, max_batch_size=1_048_576)
        await producer.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, group_id=None,
                                    max_partition_fetch_bytes=8 * 1024 * 1024)
        await consumer.start()
        tps = [TopicPartition(f"{prefix}{DELIVERY_EVENTS.name}", p) for p in range(P)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        def batch(step: str, p: int, chunk: np.ndarray, n: int) -> bytes:
            return orjson.dumps({"batch_id": f"bench:{step}:{p}:{n}", "campaign_id": cid, "step": step,
                                 "partition": p, "recipients": [{"user_id": int(u)} for u in chunk]})

        async def count_events(step: str, want: int, timeout: float) -> float:
            got, deadline = 0, time.monotonic() + timeout
            while got < want:
                if time.monotonic() > deadline or any(pr.poll() is not None for pr in procs):
                    raise SystemExit(f"bench: {got}/{want} events of {step}; see .local/logs/bench-gate-w*.log")
                for msgs in (await consumer.getmany(timeout_ms=200)).values():
                    for m in msgs:
                        got += sum(1 for e in orjson.loads(m.value)["events"] if e["step"] == step)
            return time.monotonic()

        # Warm-up: one user per partition, until every worker is assigned and serving.
        for p in range(P):
            await producer.send(f"{prefix}{MESSAGE_REQUESTS.name}", batch("warmup", p, uids[parts == p][:1], 0), partition=p)
        await count_events("warmup", P, timeout=180)
        await asyncio.sleep(args.settle)

        records = []
        for p in range(P):
            mine = uids[parts == p]
            records += [(p, batch("send", p, mine[i:i + args.batch], i)) for i in range(0, len(mine), args.batch)]
        random.Random(0).shuffle(records)
        t0 = time.monotonic()
        for p, value in records:
            await producer.send(f"{prefix}{MESSAGE_REQUESTS.name}", value, partition=p)
        await producer.flush()
        t1 = await count_events("send", args.users, timeout=1800)
        await producer.stop()
        await consumer.stop()
        seconds = t1 - t0
        return {"bench": "gate", "users": args.users, "workers": args.workers, "batch": args.batch,
                "bucket_shift": args.shift, "state": "per_user_key" if args.shift == 0 else "grouped_per_bucket",
                "seconds": round(seconds, 2), "users_per_s": round(args.users / seconds)}
    finally:
        for pr in procs:
            if pr.poll() is None:
                os.killpg(pr.pid, signal.SIGTERM)
        for pr in procs:
            try:
                pr.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, signal.SIGKILL)
        await admin.delete_topics(list(topics))
        await admin.close()
        await pool.execute("DELETE FROM users WHERE user_id >= $1 AND user_id < $2", base, base + args.users)
        if cid is not None:
            await pool.execute("DELETE FROM campaigns WHERE campaign_id = $1", cid)
            found = [k async for k in rds.scan_iter(keys.campaign_pattern(cid))]
            if found:
                await rds.delete(*found)
        await pool.close()
        await rds.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--shift", type=int, default=9, help="bucket = user_id >> shift; 0 = one key per user")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after warm-up before the clock starts")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help="write the first worker's cProfile stats to this file")
    args = ap.parse_args()
    if args.serve:
        serve(args.prefix, args.shift, args.profile)
        return
    import orjson
    print(orjson.dumps(asyncio.run(run(args))).decode(), flush=True)


if __name__ == "__main__":
    main()

"""The scheduler on time: many campaigns due in the same minute, among many more scheduled for later.

    .venv/bin/python bench/schedule.py [--due 1000] [--later 100000] [--lead-s 8] [--idle-s 10]

Writes ``--later`` scheduled campaigns due days from now and ``--due`` due ``--lead-s`` seconds from now
(the same instant, so all of them fall in the same minute), starts the scheduler stage alone in a
process of its own (``python -m agents.schedule --forever``, the worker's stage without the rest of the
worker), waits until every due campaign's run is published, then measures that process's CPU over
``--idle-s`` seconds while nothing is due (utime + stime from /proc/<pid>/stat). Prints one JSON line:

    {"due": 1000, "fired": F, "duplicates": D, "fire_lag_p50_s": A, "fire_lag_p99_s": B,
     "scheduler_idle_cpu_pct": C}

Fire lag: from a run's occurrence to its launch record acknowledged by Kafka (the run row's
``published_at``, written after the acknowledgement). Duplicates: launch records on campaign-launches
beyond one per bench campaign, plus run rows beyond one per campaign. The bench campaigns have no
segment, so a worker that later reads their launch records skips them at once; they are deleted at
the end. Run it when no worker is running (hold the integration lock), so that this process is the
only scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import get_settings  # noqa: E402
from schemas.topics import CAMPAIGN_LAUNCHES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PREFIX = "bench-schedule-"


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def end_offsets(brokers: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(CAMPAIGN_LAUNCHES.name, p) for p in range(CAMPAIGN_LAUNCHES.partitions)]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def launch_ids_between(brokers: str, start: dict, stop: dict, campaigns: set[int]) -> list[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[str] = []
    try:
        wanted = {tp: o for tp, o in start.items() if stop[tp] > o}
        if not wanted:
            return found
        consumer.assign(list(wanted))
        for tp, o in wanted.items():
            consumer.seek(tp, o)
        open_tps = set(wanted)
        while open_tps:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset < stop[tp]:
                        value = orjson.loads(m.value)
                        if value.get("campaign_id") in campaigns:
                            found.append(value["launch_id"])
                if await consumer.position(tp) >= stop[tp]:
                    open_tps.discard(tp)
    finally:
        await consumer.stop()
    return found


async def insert(conn: asyncpg.Connection, count: int, at: datetime, tag: str) -> list[int]:
    rows = [(f"{PREFIX}{tag}-{i}", "scheduled", "scheduled", ["email"], at, at) for i in range(count)]
    await conn.copy_records_to_table("campaigns", records=rows,
                                     columns=["name", "type", "status", "channels", "start_time", "next_run_at"])
    return [r["campaign_id"] for r in await conn.fetch("SELECT campaign_id FROM campaigns WHERE name LIKE $1",
                                                       f"{PREFIX}{tag}-%")]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--later", type=int, default=100_000)
    parser.add_argument("--lead-s", type=float, default=8.0)
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    settings = get_settings()
    conn = await asyncpg.connect(settings.postgres_dsn)
    proc = None
    try:
        await conn.execute("DELETE FROM campaigns WHERE name LIKE $1", f"{PREFIX}%")
        later = datetime.now(timezone.utc) + timedelta(days=30)
        await insert(conn, args.later, later, "later")
        await conn.execute("ANALYZE campaigns")
        proc = subprocess.Popen([sys.executable, "-m", "agents.schedule", "--forever"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        due_at = (datetime.now(timezone.utc) + timedelta(seconds=args.lead_s)).replace(microsecond=0)
        due_ids = await insert(conn, args.due, due_at, "due")
        before = await end_offsets(settings.kafka_brokers)

        deadline = time.monotonic() + args.lead_s + 60
        while time.monotonic() < deadline:
            published = await conn.fetchval(
                "SELECT count(*) FROM campaign_runs WHERE campaign_id = ANY($1::bigint[]) AND state = 'published'",
                due_ids)
            if published >= args.due:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the last publishes settle; nothing is due from here on

        t0, c0 = time.monotonic(), cpu_ticks(proc.pid)
        await asyncio.sleep(args.idle_s)
        t1, c1 = time.monotonic(), cpu_ticks(proc.pid)
        idle_pct = 100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)

        runs = await conn.fetch(
            "SELECT campaign_id, occurrence, published_at FROM campaign_runs"
            " WHERE campaign_id = ANY($1::bigint[]) AND state = 'published'", due_ids)
        per_campaign = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT campaign_id) FROM campaign_runs WHERE campaign_id = ANY($1::bigint[])",
            due_ids)
        records = await launch_ids_between(settings.kafka_brokers, before, await end_offsets(settings.kafka_brokers),
                                           set(due_ids))
        lags = [(r["published_at"] - r["occurrence"]).total_seconds() for r in runs]
        print(orjson.dumps({
            "due": args.due,
            "fired": len({r["campaign_id"] for r in runs}),
            "duplicates": (len(records) - len(set(records))) + per_campaign,
            "fire_lag_p50_s": round(percentile(lags, 0.50), 3) if lags else None,
            "fire_lag_p99_s": round(percentile(lags, 0.99), 3) if lags else None,
            "fire_lag_max_s": round(max(lags), 3) if lags else None,
            "scheduler_idle_cpu_pct": round(idle_pct, 2),
            "later": args.later, "launch_records": len(records), "tick_s": settings.schedule_tick_s,
        }).decode(), flush=True)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        await conn.execute("DELETE FROM campaigns WHERE name LIKE $1", f"{PREFIX}%")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())

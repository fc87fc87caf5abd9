"""Events drive campaigns (issue 14): trigger latency at a paced event rate, then a million users parked on a wait.

    .venv/bin/python bench/triggers.py [--rate 5000] [--seconds 60] [--parked 1000000] [--workers 2]
    .venv/bin/python bench/triggers.py --seconds 10 --parked 50000          # quick mode (~2-3 minutes)

Part 1 (latency). ``--users`` bench users are written to PostgreSQL (COPY), three active triggered email
campaigns are created on three event names of this run (``bt<run>.a|b|c``, each with ``amount > 49`` and
reentry "every"), and events are produced to ``user-events`` at ``--rate`` per second for ``--seconds``
(aiokafka, a batch per 10 ms tick; names a/b/c 40 %, a fifth name 60 %, amount uniform 0-99, so about a
fifth of the events match one rule; a unique event_id each; occurred_at = the tick's produce time).
Every matching event must give exactly one email: a match of (user, campaign) is the message of step
``send@<tag>``, the tag the event's second, or the second after the previous match's tag when two match
in one second (pipeline/journeys/engine.py ``start``; schemas/messages.message_id). The provider peers run in their own process
(bench/pipeline.py ``--serve-peers``: SendGrid-shaped batch email by default, each message id with its
arrival time). Latency = arrival at the peer - occurred_at; ``to_queued`` is occurred_at -> the gate's
"queued" delivery event (match_triggers, advance_journeys, gate), ``queued_to_peer`` the rest (senders).
``lost`` = expected messages never arrived (the drain waits until the campaigns' "sent" counters reach
the expected count, or ``--drain`` seconds without progress); ``duplicates`` = arrivals beyond one.

Part 2 (parked users). A journey (tests/helpers/journeys.publish_flow): entry ``bt<run>.park`` -> wait
1_day -> email -> exit. ``--parked`` entry events for as many users (not in PostgreSQL: a wait needs no
profile) are produced as fast as possible; the bench waits until the progress hash says ``at:pause`` ==
``--parked`` (or it stops growing for ``--stall`` s). The workers' VmRSS (/proc/<pid>/status) is read
before the entries and after parking, each time after asking the workers to hand their free heap back
(``.local/logs/give-back.request``), so that both read what is held, not an earlier burst's peak (added_rss: the sum over workers), and their CPU (utime+stime of
/proc/<pid>/stat) over ``--idle-s`` seconds while nobody is due, before (``idle_cpu_floor_pct``) and
after parking (``idle_cpu_pct``), as percent of one core summed over the workers.

Prints ONE JSON line: {"events", "matching", "entered", "sent", "p50_s", "p99_s", "lost", "duplicates",
"parked", "parked_rss_mb", "idle_cpu_pct", "idle_cpu_floor_pct", ...}.

At the end: the campaigns, the journey, their flow:* and campaign:* Redis keys and the bench users are
removed; workers and peers stopped; the journey table's changelog (every parked user's place, which a
restarted worker would otherwise restore, ~1M records) is put back to the records it held before the
bench (delete, re-create, re-produce; ``--keep-changelog`` skips this). The events stay in Cassandra
(ingest_events writes them like any event). Needs the stack up and no other worker: run it under
``flock /tmp/herald-integration.lock``.
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
import secrets  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import defaultdict  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import asyncpg  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from redis import asyncio as aioredis  # noqa: E402

from bench.pipeline import PIPELINE_GROUPS, drop_seen, queued_times, stop, wait_group_stable  # noqa: E402
from config import get_settings  # noqa: E402
from schemas import keys  # noqa: E402
from schemas.messages import message_id  # noqa: E402
from schemas.topics import DELIVERY_EVENTS, JOURNEY_STATE, USER_EVENTS  # noqa: E402

GROUPS = PIPELINE_GROUPS + (".match_triggers", ".ingest_events")
RULES = ("a", "b", "c")
RULE_SHARE = 0.4  # of the events named a, b or c; half of those have amount > 49
TICK_S = 0.01
CLK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[triggers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def start_worker(env: dict[str, str], i: int) -> subprocess.Popen:
    settings = get_settings()
    log = open(settings.local_dir / "logs" / f"bench-triggers-worker-{i}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "pipeline.worker", "worker", "-l", "warn", "--without-web"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env})


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def anon_mb(pid: int) -> float:
    """Resident anonymous memory: the heap, without the file-backed pages of the mmapped audience store
    (which VmRSS counts as they are touched, so that VmRSS before and after parking differ by whatever
    part 1 read of it)."""
    return rss_mb(pid, "RssAnon")


def ask_give_back(settings, wait_s: float = 6.0) -> None:
    """Every worker hands its free heap back (pipeline.memory.GiveBacks, looked at every 2 s)."""
    (settings.local_dir / "logs" / "give-back.request").touch()
    time.sleep(wait_s)


async def idle_cpu_pct(pids: list[int], seconds: float) -> tuple[float, list[float]]:
    """CPU of these processes over ``seconds``: percent of one core, summed, and each."""
    t0, c0 = time.monotonic(), [cpu_ticks(p) for p in pids]
    await asyncio.sleep(seconds)
    t1, c1 = time.monotonic(), [cpu_ticks(p) for p in pids]
    each = [100.0 * (b - a) / CLK / (t1 - t0) for a, b in zip(c0, c1)]
    return round(sum(each), 2), [round(x, 2) for x in each]


# ---------------------------------------------------------------- stores


async def insert_bench_users(dsn: str, ids: range) -> None:
    from tests.helpers.pipeline import insert_users

    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, len(ids), 50_000):
            await insert_users(conn, ids[start:start + 50_000], lambda u: "en")
    finally:
        await conn.close()


async def create_triggered(dsn: str, redis_url: str, prefix: str, topic: str) -> dict[str, int]:
    """One active triggered email campaign per rule name: name -> campaign_id."""
    from tests.helpers.pipeline import DEFAULT_CONTENT

    conn = await asyncpg.connect(dsn)
    out = {}
    try:
        for rule in RULES:
            trigger = {"event": f"{prefix}.{rule}", "topic": topic, "reentry": "every",
                       "where": {"conditions": [{"field": "amount", "operator": "greater_than", "value": 49}],
                                 "logic": "AND"}}
            out[rule] = await conn.fetchval(
                "INSERT INTO campaigns (name, type, status, channels, content, trigger)"
                " VALUES ($1, 'triggered', 'active', $2, $3::jsonb, $4::jsonb) RETURNING campaign_id",
                f"bench-{prefix}-{rule}", ["email"], orjson.dumps({"email": DEFAULT_CONTENT["email"]}).decode(),
                orjson.dumps(trigger).decode())
    finally:
        await conn.close()
    r = aioredis.from_url(redis_url)
    try:
        await r.incr(keys.FLOWS_CHANGED)
    finally:
        await r.aclose()
    return out


def park_journey(prefix: str, topic: str) -> dict:
    return {"name": f"bench {prefix} park", "nodes": [
        {"id": "start", "type": "entry", "event": f"{prefix}.park", "topic": topic, "next": "pause"},
        {"id": "pause", "type": "wait", "duration": "1_day", "next": "mail"},
        {"id": "mail", "type": "send", "channel": "email", "template_id": 1, "next": "done"},
        {"id": "done", "type": "exit"},
    ]}


async def publish_park_journey(dsn: str, redis_url: str, prefix: str, topic: str) -> tuple[int, dict]:
    from tests.helpers.journeys import publish_flow

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    r = aioredis.from_url(redis_url)
    try:
        journey_id, _, steps = await publish_flow(pool, r, park_journey(prefix, topic))
        return journey_id, steps
    finally:
        await r.aclose()
        await pool.close()


async def redis_hash(redis_url: str, key: str) -> dict[str, float]:
    r = aioredis.from_url(redis_url)
    try:
        return {k.decode(): float(v) for k, v in (await r.hgetall(key)).items()}
    finally:
        await r.aclose()


async def cleanup(settings, campaigns: list[int], journey_id: int | None, users: list[range]) -> None:
    r = aioredis.from_url(settings.redis_url)
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        if journey_id is not None:
            campaigns = campaigns + [c["campaign_id"] for c in await conn.fetch(
                "SELECT campaign_id FROM campaigns WHERE journey_id = $1", journey_id)]
        if campaigns:
            await drop_seen(settings, campaigns)
            await conn.execute("DELETE FROM campaigns WHERE campaign_id = ANY($1::bigint[])", campaigns)
        if journey_id is not None:
            await conn.execute("DELETE FROM journeys WHERE journey_id = $1", journey_id)
        patterns = [f"flow:c{c}:*" for c in campaigns] + [f"campaign:{c}:*" for c in campaigns]
        patterns += [f"flow:j{journey_id}:*"] if journey_id is not None else []
        for pattern in patterns:
            found = [k async for k in r.scan_iter(match=pattern, count=10_000)]
            for i in range(0, len(found), 10_000):
                await r.unlink(*found[i:i + 10_000])
        await r.incr(keys.FLOWS_CHANGED)
        for ids in users:
            await conn.execute("DELETE FROM users WHERE user_id BETWEEN $1 AND $2", ids.start, ids.stop - 1)
    finally:
        await conn.close()
        await r.aclose()


# ---------------------------------------------------------------- the journey table's changelog


async def read_changelog(brokers: str) -> list[tuple[int, bytes | None, bytes | None]] | None:
    """Every record of the journey table's changelog (None if it holds more than 500,000)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, bytes | None, bytes | None]] = []
    try:
        tps = [TopicPartition(JOURNEY_STATE.name, p) for p in range(JOURNEY_STATE.partitions)]
        starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        if sum(ends[tp] - starts[tp] for tp in tps) > 500_000:
            return None
        wanted = {tp for tp in tps if ends[tp] > starts[tp]}
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, starts[tp])
        while wanted:
            for tp, records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).items():
                out += [(tp.partition, m.key, m.value) for m in records if m.offset < ends[tp]]
                if await consumer.position(tp) >= ends[tp]:
                    wanted.discard(tp)
    finally:
        await consumer.stop()
    return out


async def restore_changelog(brokers: str, kept: list[tuple[int, bytes | None, bytes | None]]) -> None:
    """Delete the changelog, create it again as schemas/topics.py declares it, write ``kept`` back."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.delete_topics([JOURNEY_STATE.name])
        deadline = time.monotonic() + 60
        while True:
            await asyncio.sleep(1.0)
            try:
                await admin.create_topics([NewTopic(JOURNEY_STATE.name, JOURNEY_STATE.partitions, 1,
                                                    topic_configs=JOURNEY_STATE.config)])
                break
            except Exception as exc:  # noqa: BLE001 - still marked for deletion
                if time.monotonic() > deadline:
                    raise SystemExit(f"could not re-create {JOURNEY_STATE.name}: {exc!r}; run `make up`")
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(JOURNEY_STATE.name, value, key=key, partition=p) for p, key, value in kept]
        for f in futures:
            await f
    finally:
        await producer.stop()


# ---------------------------------------------------------------- producing events


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


async def produce_paced(brokers: str, topic: str, prefix: str, users: range, rate: float, seconds: float, id_base: int
                        ) -> tuple[int, dict[tuple[str, int], list[float]], float]:
    """Paced events; returns (events produced, (rule, user) -> occurred_at of each matching event, end epoch)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks=1, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    matches: dict[tuple[str, int], list[float]] = defaultdict(list)
    rng = random.Random(id_base)
    sent, late_ticks = 0, 0
    total = int(rate * seconds)
    try:
        start = time.monotonic()
        futures = []
        while sent < total:
            now_m = time.monotonic()
            due = min(total, int((now_m - start) * rate) + 1)
            if due > sent:
                at = time.time()
                at_iso = iso(at)
                for i in range(sent, due):
                    uid = users.start + rng.randrange(len(users))
                    r = rng.random()
                    rule = RULES[int(r / RULE_SHARE * 3)] if r < RULE_SHARE else "view"
                    amount = rng.randrange(100)
                    if rule != "view" and amount > 49:
                        matches[(rule, uid)].append(at)
                    value = orjson.dumps({"user_id": uid, "name": f"{prefix}.{rule}", "occurred_at": at_iso,
                                          "properties": {"amount": amount, "sku": f"s{i % 1000}"},
                                          "event_id": str(uuid.UUID(int=id_base + i))})
                    futures.append(await producer.send(topic, value, key=str(uid).encode()))
                sent = due
                if len(futures) > 20_000:
                    await asyncio.gather(*futures)
                    futures = []
            sleep = start + (sent / rate) - time.monotonic()
            if sleep > 0:
                await asyncio.sleep(min(sleep, TICK_S))
            else:
                late_ticks += 1
                await asyncio.sleep(0)
        await asyncio.gather(*futures)
        took = time.monotonic() - start
        if took > seconds * 1.05:
            say(f"producer fell behind: {total} events in {took:.1f}s")
    finally:
        await producer.stop()
    return sent, matches, time.time()


async def produce_entries(brokers: str, topic: str, prefix: str, users: range, id_base: int) -> float:
    """One entry event per user, as fast as the producer goes; returns seconds."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks=1, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    t0 = time.monotonic()
    try:
        name, futures = f"{prefix}.park", []
        for i, uid in enumerate(users):
            if i % 5000 == 0:
                at_iso = iso(time.time())
            value = orjson.dumps({"user_id": uid, "name": name, "occurred_at": at_iso, "properties": {},
                                  "event_id": str(uuid.UUID(int=id_base + i))})
            futures.append(await producer.send(topic, value, key=str(uid).encode()))
            if len(futures) >= 50_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - t0


async def create_topic(brokers: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, JOURNEY_STATE.partitions, 1)])
    finally:
        await admin.close()


async def delete_topic(brokers: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


# ---------------------------------------------------------------- waiting


async def wait_sent(redis_url: str, campaigns: list[int], expected: int, drain_s: float) -> float:
    """Until the campaigns' "sent" (+ suppressed, failed) reach ``expected``, or ``drain_s`` without progress."""
    r = aioredis.from_url(redis_url)
    last, since = -1.0, time.monotonic()
    try:
        while True:
            total = 0.0
            for cid in campaigns:
                got = await r.hmget(keys.metrics_key(cid), ["sent", "suppressed", "failed"])
                total += sum(float(v) for v in got if v is not None)
            if total >= expected:
                return total
            if total != last:
                last, since = total, time.monotonic()
            elif time.monotonic() - since > drain_s:
                say(f"drain: {total:.0f}/{expected} after {drain_s:.0f}s without progress")
                return total
            await asyncio.sleep(0.5)
    finally:
        await r.aclose()


async def wait_parked(redis_url: str, journey_id: int, target: int, stall_s: float, timeout_s: float,
                      pids: list[int]) -> tuple[int, float, float, list[tuple[float, int]]]:
    """Until at:pause == target (or no growth for ``stall_s``); (reached, seconds, peak RSS MB, trace)."""
    r = aioredis.from_url(redis_url)
    key = keys.flow_progress_key(f"j{journey_id}")
    t0 = time.monotonic()
    last, since, peak, trace = -1, t0, 0.0, []
    try:
        while True:
            at = int(float(await r.hget(key, "at:pause") or 0))
            now = time.monotonic()
            peak = max(peak, sum(rss_mb(p) for p in pids))
            if not trace or now - trace[-1][0] >= 10:
                trace.append((round(now - t0, 1), at))
            if at >= target:
                return at, now - t0, peak, trace
            if at != last:
                last, since = at, now
            elif now - since > stall_s or now - t0 > timeout_s:
                say(f"parking stopped at {at}/{target}")
                return at, since - t0, peak, trace
            await asyncio.sleep(1.0)
    finally:
        await r.aclose()


LAG_TOPICS = (("match_triggers", "user-events", ".match_triggers"), ("advance_journeys", "journey-signals", ""),
              ("gate", "message-requests", ""), ("send_email", "outbox.email", ".send_email"))


async def sample_lags(settings, stop_at: asyncio.Event, every_s: float = 2.0) -> dict[str, int]:
    """The largest backlog (end offset - the group's committed offset, summed over partitions) seen per stage."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, group_id=None)
    await admin.start()
    await consumer.start()
    worst: dict[str, int] = {stage: 0 for stage, _, _ in LAG_TOPICS}
    try:
        while not stop_at.is_set():
            for stage, topic, suffix in LAG_TOPICS:
                try:
                    committed = await admin.list_consumer_group_offsets(settings.app_id + suffix)
                    tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
                    ends = await consumer.end_offsets(tps)
                    lag = sum(ends[tp] - committed[tp].offset for tp in tps if tp in committed)
                    worst[stage] = max(worst[stage], lag)
                except Exception:  # noqa: BLE001 - a sample less
                    pass
            try:
                await asyncio.wait_for(stop_at.wait(), every_s)
            except asyncio.TimeoutError:
                pass
    finally:
        await consumer.stop()
        await admin.close()
    return worst


def profile(pids: list[int], seconds: float, out_dir: Path) -> list[subprocess.Popen]:
    """py-spy (``--profile``) on each worker for ``seconds``: collapsed stacks in ``out_dir``."""
    spy = os.environ.get("PY_SPY", "py-spy")
    return [subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50", "--nonblocking", "-f", "raw",
                              "-o", str(out_dir / f"triggers-worker-{i}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, pid in enumerate(pids)]


def pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict:
    from tests.helpers.kafka import end_offsets

    settings = get_settings()
    (settings.local_dir / "logs").mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(3)
    prefix = f"bt{run_id}"
    base = 7 * 10**12 + random.randrange(10**6) * 10**7
    users = range(base + 10, base + 10 + args.users)  # base .. base+9: warm-up users
    warm = range(base, base + len(RULES))
    parked_users = range(base + 5 * 10**6, base + 5 * 10**6 + args.parked)
    figures: dict = {"run": prefix, "workers": args.workers, "rate": args.rate, "seconds": args.seconds,
                     "users": args.users, "email_provider": args.email_provider}

    kept = None if args.keep_changelog else asyncio.run(read_changelog(settings.kafka_brokers))
    if kept is None and not args.keep_changelog:
        say("the journey changelog holds > 500,000 records: it is left as it is")
    t0 = time.perf_counter()
    asyncio.run(insert_bench_users(settings.postgres_dsn, range(base, users.stop)))
    figures["setup_s"] = round(time.perf_counter() - t0, 1)
    campaigns: dict[str, int] = {}
    journey_id = None
    peers_out = settings.local_dir / f"bench-triggers-peers-{prefix}.json"
    peers = subprocess.Popen([sys.executable, str(REPO / "bench" / "pipeline.py"), "--serve-peers", str(peers_out)],
                             cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    assert peers.stdout is not None and b"peers ready" in peers.stdout.readline()
    env = {"HERALD_EMAIL_PROVIDER": args.email_provider,
           **{f"HERALD_RATE_{c}": "1000000" for c in ("EMAIL", "PUSH", "SMS", "IN_APP")},
           "HERALD_GATE_OPT_IN_CHANNELS": "", "HERALD_GATE_CHANNEL_QUIET_HOURS": ""}  # synthetic users, any hour
    procs = [start_worker(env, i) for i in range(args.workers)]
    pids = [p.pid for p in procs]
    try:
        # ---- Part 1: latency
        t0 = time.perf_counter()
        for suffix in GROUPS:
            asyncio.run(wait_group_stable(settings, settings.app_id + suffix, timeout_s=180, members=args.workers))
        figures["workers_ready_s"] = round(time.perf_counter() - t0, 1)
        event_topic = USER_EVENTS.name if args.event_topic == "user-events" else f"{prefix}-events"
        figures["event_topic"] = args.event_topic
        if event_topic != USER_EVENTS.name:
            asyncio.run(create_topic(settings.kafka_brokers, event_topic))
        campaigns = asyncio.run(create_triggered(settings.postgres_dsn, settings.redis_url, prefix, event_topic))
        cids = list(campaigns.values())
        say(f"workers ready in {figures['workers_ready_s']}s; campaigns {campaigns}")
        events_before = asyncio.run(end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name))
        # Warm-up: one matching event per rule, until the three emails are sent (flows loaded, every stage up).
        if event_topic != USER_EVENTS.name:
            time.sleep(15.0)  # match_triggers re-subscribes to the new topic (a rebalance of its group)
        warm_at = asyncio.run(send_warmup(settings.kafka_brokers, event_topic, prefix, warm))
        warm_sent = asyncio.run(wait_sent(settings.redis_url, cids, len(RULES), 60))
        say(f"warm-up: {warm_sent:.0f}/{len(RULES)} sent")
        time.sleep(2.0)
        say(f"producing {args.rate}/s for {args.seconds}s")
        spies = profile(pids, min(20.0, args.seconds), args.profile) if args.profile else []
        cpu0, t_cpu0 = [cpu_ticks(p) for p in pids], time.monotonic()

        async def part1():
            stop_at = asyncio.Event()
            lags = asyncio.create_task(sample_lags(settings, stop_at))
            made = await produce_paced(settings.kafka_brokers, event_topic, prefix, users, args.rate, args.seconds,
                                       random.randrange(2**100))
            say(f"produced {made[0]} events, {sum(len(v) for v in made[1].values())} matching; draining")
            await wait_sent(settings.redis_url, cids, sum(len(v) for v in made[1].values()) + len(RULES), args.drain)
            stop_at.set()
            return made, await lags
        (produced, matches, last_event), figures["max_backlog"] = asyncio.run(part1())
        figures["worker_cpu_pct_part1"] = round(sum(100.0 * (cpu_ticks(p) - c) / CLK for p, c in zip(pids, cpu0))
                                                / (time.monotonic() - t_cpu0), 1)
        for spy in spies:
            spy.wait(timeout=120)
        matching = sum(len(v) for v in matches.values())
        figures["drain_s"] = round(time.time() - last_event, 1)
        time.sleep(2.0)
        progress = {rule: asyncio.run(redis_hash(settings.redis_url, keys.flow_progress_key(f"c{cid}")))
                    for rule, cid in campaigns.items()}
        metrics = {rule: asyncio.run(redis_hash(settings.redis_url, keys.metrics_key(cid)))
                   for rule, cid in campaigns.items()}
        stop(peers)
        figures.update(latency_figures(settings, campaigns, matches, peers_out, events_before, warm,
                                       warm_at))
        peers_out.unlink(missing_ok=True)
        figures.update({"events": produced, "matching": matching,
                        "entered": int(sum(p.get("entered", 0) for p in progress.values())) - len(RULES),
                        "sent": int(sum(m.get("sent", 0) for m in metrics.values())) - len(RULES),
                        "suppressed": int(sum(m.get("suppressed", 0) for m in metrics.values())),
                        "refused": {k: int(v) for p in progress.values() for k, v in p.items()
                                    if k.startswith("refused:")}})
        say(f"part 1: {orjson.dumps(figures).decode()}")
        if args.parked <= 0:
            return figures

        # ---- Part 2: parked users
        time.sleep(args.settle)
        ask_give_back(settings)  # "before" is what the workers hold, not part 1's or the store's load peak
        figures["rss_before_mb"] = [round(rss_mb(p), 1) for p in pids]
        figures["anon_before_mb"] = [round(anon_mb(p), 1) for p in pids]
        figures["idle_cpu_floor_pct"], figures["idle_cpu_floor_each"] = asyncio.run(idle_cpu_pct(pids, args.idle_s))
        park_topic = USER_EVENTS.name if args.park_topic == "user-events" else f"{prefix}-park"
        if park_topic != USER_EVENTS.name:
            asyncio.run(create_topic(settings.kafka_brokers, park_topic))
        figures["park_topic"] = args.park_topic
        journey_id, _ = asyncio.run(publish_park_journey(settings.postgres_dsn, settings.redis_url, prefix, park_topic))
        time.sleep(1.0 if park_topic == USER_EVENTS.name else 15.0)  # match_triggers re-subscribes (a rebalance)
        say(f"journey {journey_id} live; producing {args.parked} entry events")
        produce_s = asyncio.run(produce_entries(settings.kafka_brokers, park_topic, prefix, parked_users, random.randrange(2**100)))
        figures["park_produce_s"] = round(produce_s, 1)
        reached, secs, peak, trace = asyncio.run(wait_parked(settings.redis_url, journey_id, args.parked, args.stall,
                                                             args.park_timeout, pids))
        figures["parked"] = reached
        figures["park_s"] = round(produce_s + secs, 1)  # first entry event produced -> last user parked
        figures["park_per_s"] = round(reached / max(figures["park_s"], 1e-9))
        figures["park_trace"] = trace
        time.sleep(args.settle)
        ask_give_back(settings)
        figures["rss_after_mb"] = [round(rss_mb(p), 1) for p in pids]
        figures["anon_after_mb"] = [round(anon_mb(p), 1) for p in pids]
        figures["parked_anon_mb"] = round(sum(figures["anon_after_mb"]) - sum(figures["anon_before_mb"]), 1)
        figures["anon_per_parked_user_b"] = round(figures["parked_anon_mb"] * 2**20 / max(reached, 1))
        figures["parked_rss_mb"] = round(sum(figures["rss_after_mb"]) - sum(figures["rss_before_mb"]), 1)
        figures["peak_rss_mb"] = round(max(peak, sum(figures["rss_after_mb"])), 1)
        figures["rss_per_parked_user_b"] = round(figures["parked_rss_mb"] * 2**20 / max(reached, 1))
        figures["idle_cpu_pct"], figures["idle_cpu_each"] = asyncio.run(idle_cpu_pct(pids, args.idle_s))
        figures["park_progress"] = {k: int(v) for k, v in asyncio.run(redis_hash(
            settings.redis_url, keys.flow_progress_key(f"j{journey_id}"))).items()}
        figures["workers_alive"] = sum(1 for p in procs if p.poll() is None)
        if event_topic != USER_EVENTS.name:  # at the end: part 1's rules (still active) name it
            asyncio.run(delete_topic(settings.kafka_brokers, event_topic))
        if park_topic != USER_EVENTS.name:
            asyncio.run(delete_topic(settings.kafka_brokers, park_topic))
        return figures
    finally:
        for p in procs:
            stop(p)
        if peers.poll() is None:
            stop(peers)
        peers_out.unlink(missing_ok=True)
        asyncio.run(cleanup(settings, list(campaigns.values()), journey_id, [range(base, users.stop)]))
        if kept is not None:
            asyncio.run(restore_changelog(settings.kafka_brokers, kept))
            say(f"journey changelog put back to its {len(kept)} records from before the bench")


async def send_warmup(brokers: str, topic: str, prefix: str, warm: range) -> float:
    """One matching event per rule; returns when they happened."""
    from tests.helpers.kafka import produce

    when = time.time()
    at = iso(when)
    await produce(brokers, topic, [
        (str(uid).encode(), orjson.dumps({"user_id": uid, "name": f"{prefix}.{rule}", "occurred_at": at,
                                          "properties": {"amount": 99}, "event_id": str(uuid.uuid4())}))
        for uid, rule in zip(warm, RULES)])
    return when


def latency_figures(settings, campaigns: dict[str, int], matches: dict[tuple[str, int], list[float]],
                    peers_out: Path, events_before: dict, warm: range, warm_at: float) -> dict:
    got = orjson.loads(peers_out.read_bytes())
    seen: dict[str, int] = got["seen"]
    arrivals: dict[str, float] = got["arrivals"]
    queued = asyncio.run(queued_times(settings, set(campaigns.values()), events_before))
    warm_keys = {f"email:{message_id(cid, uid, 'email', f'send@{int(warm_at)}')}"
                 for uid, cid in zip(warm, campaigns.values())}
    wanted: set[str] = set(warm_keys)
    lat, to_q, q_to_peer = [], [], []
    lost = duplicates = 0
    lost_by_rule: dict[str, int] = defaultdict(int)
    for (rule, uid), times in matches.items():
        cid = campaigns[rule]
        tag = -1
        for at in times:  # as the engine tags entries: the entry's second, or the one after the last entry's
            tag = max(int(at), tag + 1)
            key = f"email:{message_id(cid, uid, 'email', f'send@{tag}')}"
            wanted.add(key)
            n = seen.get(key, 0)
            if n == 0:
                lost += 1
                lost_by_rule[rule] += 1
                continue
            duplicates += n - 1
            lat.append(arrivals[key] - at)
            if key in queued:
                to_q.append(queued[key] - at)
                q_to_peer.append(arrivals[key] - queued[key])
    lat_a, q_a, p_a = np.array(lat), np.array(to_q), np.array(q_to_peer)
    return {"p50_s": pct(lat_a, 50), "p99_s": pct(lat_a, 99), "max_s": round(float(lat_a.max()), 3) if len(lat) else None,
            "p90_s": pct(lat_a, 90), "lost": lost, "duplicates": duplicates,
            "at_peers": sum(seen.values()), "unexpected_at_peers": sum(c for k, c in seen.items() if k not in wanted),
            "warmup_at_peers": sum(seen.get(k, 0) for k in warm_keys),
            "to_queued_p50_s": pct(q_a, 50), "to_queued_p99_s": pct(q_a, 99),
            "queued_to_peer_p50_s": pct(p_a, 50), "queued_to_peer_p99_s": pct(p_a, 99),
            "lost_by_rule": dict(lost_by_rule)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second (part 1)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long events are produced (part 1)")
    parser.add_argument("--users", type=int, default=100_000, help="bench users in PostgreSQL (part 1)")
    parser.add_argument("--parked", type=int, default=1_000_000, help="users parked on a 1-day wait (part 2; 0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drain", type=float, default=60.0, help="give up draining after this long without progress")
    parser.add_argument("--idle-s", type=float, default=20.0, help="CPU measurement window while nothing is due")
    parser.add_argument("--stall", type=float, default=60.0, help="parking: give up after this long without growth")
    parser.add_argument("--park-timeout", type=float, default=1800.0)
    parser.add_argument("--event-topic", choices=("user-events", "own"), default="user-events",
                        help="where part 1's events go: user-events (ingested into Cassandra and the audience store"
                             " too, as upstream events are) or a topic of their own (the trigger path alone)")
    parser.add_argument("--park-topic", choices=("own", "user-events"), default="own",
                        help="where the parking entry events go: a topic of their own (what the journeys cost:"
                             " ingest_events and the audience store do not read it) or user-events (they do too)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each RSS/CPU measurement")
    parser.add_argument("--email-provider", choices=("smtp", "batch"), default="batch")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy each worker for the first 20 s of part 1 (collapsed stacks; $PY_SPY or py-spy)")
    parser.add_argument("--keep-changelog", action="store_true",
                        help="leave the parked users' places in the journey table's changelog")
    args = parser.parse_args()
    print(orjson.dumps(run(args)).decode(), flush=True)


if __name__ == "__main__":
    main()

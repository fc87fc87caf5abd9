"""Chaos: a worker and then the Kafka broker die mid-campaign; count what the providers got.

    .venv/bin/python bench/chaos.py --recipients 200000 [--workers 2] [--timeout 900]

Two rounds of the mixed campaign of bench/pipeline.py (email 60 %, push 30 %, SMS 8 %,
in-app 2 %, one campaign per channel, ``--recipients`` fresh users per round, so no
frequency cap or dedup links the rounds). Its pieces are imported, not copied: users and
segments by COPY, the in-process API, the workers, and the provider peers in their own
process counting every accepted message by id (in-app messages are counted afterwards
in the users' Redis inboxes, by message_id).

    round A launched ── sent ≥ --worker-kill-at ──► SIGKILL worker 1 (its process group),
                        restart it --restart-after seconds later
    round A completed (or --round-timeout) ── round B launched
    round B sent ≥ --broker-kill-at ──► SIGKILL the broker's recorded pid
                        (<local_dir>/run/kafka.pid), --broker-down seconds later
                        ``scripts/stack.py start kafka``
    every campaign completed (or --timeout) ── --settle seconds ── stop, count

A worker that exits on its own is restarted at once, as a supervisor would, and listed in
``worker_exits``. "sent ≥ f" is the aggregate's ``sent`` counters over the round's
recipients (Redis ``campaign:{id}:metrics``); a trigger not reached within
--trigger-timeout seconds fires anyway. Prints ONE JSON line:

    {"recipients", "lost", "duplicates", "seconds", "worker_kill_at", "broker_kill_at", ...}

``lost`` = expected messages (every recipient × its channel; fresh users, nothing should
be suppressed) never accepted by a peer; ``duplicates`` = acceptances beyond the first.
Both are also given per round and channel. Times are seconds since round A's launch.
``duplicate_attribution`` places each duplicated message by its "sent" events on
delivery-events: one event means the first sending died before reporting (a SIGKILL
between the provider's acknowledgement and the send ledger's record, pipeline/send/ledger.py's
crash window 1); two events date the second processing within the run's phases.
Needs the stack up and no other Herald worker or peers on the same settings. Run it
on a private stack (HERALD_LOCAL_DIR, ports: see config/settings.py): it kills the
broker that the settings name.
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
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import orjson  # noqa: E402

from bench.pipeline import (  # noqa: E402
    CONTENT,
    PIPELINE_GROUPS,
    SHARES,
    _hash,
    campaign_states,
    drop_seen,
    make_segments,
    make_users,
    start_worker,
    stop,
    wait_group_stable,
)
from config import get_settings  # noqa: E402
from schemas.topics import DEAD_LETTERS, DELIVERY_EVENTS  # noqa: E402
from schemas import keys  # noqa: E402
from schemas.messages import message_id  # noqa: E402


def say(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- what each round should deliver


def expected_keys(campaign_id: int, channel: str, first: int, size: int) -> list[str]:
    """The peers' keys for every message of one campaign (SMS is counted by number, as bench/pipeline.py does)."""
    if channel == "sms":
        return [f"sms:+1555{u % 10**7:07d}" for u in range(first, first + size)]
    return [f"{channel}:{message_id(campaign_id, u, channel)}" for u in range(first, first + size)]


async def inbox_counts(redis_url: str, campaign_id: int, first: int, size: int) -> Counter:
    """In-app messages: how many times each message_id of the campaign is in its user's inbox."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(redis_url)
    seen: Counter = Counter()
    try:
        users = range(first, first + size)
        for start in range(0, size, 1000):
            async with r.pipeline(transaction=False) as pipe:
                for u in users[start:start + 1000]:
                    pipe.lrange(keys.inbox_key(u), 0, -1)
                for entries in await pipe.execute():
                    for raw in entries:
                        entry = orjson.loads(raw)
                        if entry.get("campaign_id") == campaign_id:
                            seen[f"in_app:{entry['message_id']}"] += 1
    finally:
        await r.aclose()
    return seen


async def round_sent(redis_url: str, campaign_ids: list[int]) -> float:
    """Messages the aggregate has counted as sent (or suppressed) for these campaigns."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(redis_url)
    try:
        total = 0.0
        for cid in campaign_ids:
            got = await r.hmget(keys.metrics_key(cid), ["sent", "suppressed"])
            total += sum(float(v) for v in got if v is not None)
        return total
    finally:
        await r.aclose()


async def sent_events(settings, campaign_ids: set[int], before: dict) -> dict[str, list[tuple[float, int]]]:
    """Every "sent" event of these campaigns since ``before``, by the peers' key -> [(epoch s, partition)]."""
    from bench.pipeline import delivery_events

    out: dict[str, list[tuple[float, int]]] = {}
    async for key, at, partition in delivery_events(settings, campaign_ids, before, "sent"):
        out.setdefault(key, []).append((at, partition))
    return out


def phase_of(t: float, figures: dict) -> str:
    """Which part of the run a moment (seconds since round A's launch) falls in."""
    marks = [("worker_kill_at", "before worker kill"), ("round_b_launch_at", "worker kill → round B launch"),
             ("broker_kill_at", "round B launch → broker kill"), ("broker_back_at", "broker down"),
             ("seconds", "broker back → completion")]
    for mark, name in marks:
        if mark in figures and t < figures[mark]:
            return name
    return "after completion"


async def dead_letter_count(settings) -> int:
    from tests.helpers.kafka import end_offsets

    return sum((await end_offsets(settings.kafka_brokers, DEAD_LETTERS.name)).values())


# ---------------------------------------------------------------- the run


class Workers:
    """The worker processes, restarted when they die (by our hand or their own)."""

    def __init__(self, count: int, env: dict[str, str], clock) -> None:
        self.env = env
        self.clock = clock
        self.procs = [start_worker(env, i) for i in range(count)]
        self.exits: list[dict] = []

    def kill(self, i: int) -> None:
        stop(self.procs[i], signal.SIGKILL)

    def restart(self, i: int) -> None:
        self.procs[i] = start_worker(self.env, i)

    def supervise(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                self.exits.append({"worker": i, "rc": p.returncode, "at": self.clock()})
                say(f"worker {i} exited on its own (rc {p.returncode}); restarting it")
                self.restart(i)

    def stop_all(self) -> None:
        for p in self.procs:
            stop(p)


def groups_stable(settings, workers: int, timeout_s: float = 120.0) -> None:
    """bench/pipeline.py's wait for every pipeline group to have all its workers, also while a
    new broker has no group coordinator yet."""
    from aiokafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    for suffix in PIPELINE_GROUPS:
        while True:
            try:
                asyncio.run(wait_group_stable(settings, settings.app_id + suffix, members=workers))
                break
            except KafkaError as e:
                if time.monotonic() > deadline:
                    raise
                say(f"waiting for group {settings.app_id + suffix}: {e!r}")
                time.sleep(1.0)


def kill_broker(settings) -> int:
    sys.path.append(str(REPO / "scripts"))
    from procs import Proc  # scripts/procs.py: the pid file scripts/stack.py wrote

    proc = Proc(settings.local_dir / "run", "kafka")
    pid = proc.pid()
    if pid is None:
        raise SystemExit(f"no running broker recorded in {proc.pid_file}; is the stack up on these settings?")
    os.kill(pid, signal.SIGKILL)
    while proc.running():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return pid


def start_broker() -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "stack.py"), "start", "kafka"], cwd=REPO, check=True,
                   stdout=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    from tests.helpers.kafka import end_offsets
    from tests.helpers.e2e import Api

    settings = get_settings()
    if settings.kafka_brokers == "127.0.0.1:9092" and not args.default_stack:
        raise SystemExit("refusing to kill the default broker; point HERALD_* at a private stack (or --default-stack)")
    logs = settings.local_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    n = args.recipients
    base = 6 * 10**12 + random.randrange(10**6) * 10**7
    asyncio.run(make_users(settings.postgres_dsn, base, 2 * n))
    rounds = [asyncio.run(make_segments(settings.postgres_dsn, base + k * n, n, SHARES)) for k in (0, 1)]

    peers_out = settings.local_dir / f"chaos-peers-{base}.json"
    peers = subprocess.Popen([sys.executable, str(REPO / "bench" / "pipeline.py"), "--serve-peers", str(peers_out)],
                             cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    assert peers.stdout is not None and b"peers ready" in peers.stdout.readline()
    # As in bench/pipeline.py: the peers answer at once, the channels' rate limits are lifted.
    env = {"HERALD_EMAIL_PROVIDER": args.email_provider, **{f"HERALD_RATE_{c.upper()}": "1000000" for c in SHARES},
           "HERALD_GATE_OPT_IN_CHANNELS": "", "HERALD_GATE_CHANNEL_QUIET_HOURS": ""}  # synthetic users, any hour
    started = time.perf_counter()
    clock = lambda: round(time.perf_counter() - started, 2)  # noqa: E731
    workers = Workers(args.workers, env, clock)
    figures: dict = {}
    campaigns: list[dict[int, str]] = [{}, {}]
    try:
        groups_stable(settings, args.workers)
        dead_before = asyncio.run(dead_letter_count(settings))
        events_before = asyncio.run(end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name))
        with Api(settings) as api:
            for k, segments in enumerate(rounds):
                for channel, (segment_id, _, _) in segments.items():
                    body = {"name": f"chaos-{'AB'[k]}-{channel}-{base}", "type": "immediate", "channels": [channel],
                            "target_segment_id": segment_id, "content": {channel: CONTENT[channel]}}
                    campaigns[k][api.call("POST", "/api/v1/campaigns", 201, json=body)["campaign_id"]] = channel
            started = time.perf_counter()
            figures["started_at_utc"] = time.strftime("%H:%M:%S", time.gmtime())
            for cid in campaigns[0]:
                api.launch(cid)
            say(f"round A launched: {n} recipients, campaigns {list(campaigns[0])}")

            def wait_for(what: str, done, timeout_s: float) -> bool:
                deadline = time.perf_counter() + timeout_s
                while time.perf_counter() < deadline:
                    workers.supervise()
                    if done():
                        return True
                    time.sleep(0.1)
                say(f"{what}: not reached in {timeout_s:.0f}s, going on")
                return False

            def progress(k: int) -> float:
                return asyncio.run(round_sent(settings.redis_url, list(campaigns[k]))) / n

            def completed(ids) -> bool:
                return all(s == "completed" for s in asyncio.run(campaign_states(settings.postgres_dsn, list(ids))).values())

            # 1. A worker dies mid-campaign and comes back.
            wait_for("worker kill trigger", lambda: progress(0) >= args.worker_kill_at, args.trigger_timeout)
            figures["worker_kill_at"] = clock()
            figures["worker_kill_progress"] = round(progress(0), 3)
            workers.kill(1)
            say(f"SIGKILLed worker 1 at {figures['worker_kill_at']}s, round A {figures['worker_kill_progress']:.0%} sent")
            time.sleep(args.restart_after)
            workers.restart(1)
            figures["worker_restart_at"] = clock()
            wait_for("round A completion", lambda: completed(campaigns[0]), args.round_timeout)
            figures["round_a_done_at"] = clock()

            # 2. Round B, and the broker dies mid-campaign.
            for cid in campaigns[1]:
                api.launch(cid)
            figures["round_b_launch_at"] = clock()
            say(f"round B launched at {figures['round_b_launch_at']}s, campaigns {list(campaigns[1])}")
        wait_for("broker kill trigger", lambda: progress(1) >= args.broker_kill_at, args.trigger_timeout)
        figures["broker_kill_at"] = clock()
        figures["broker_kill_progress"] = round(progress(1), 3)
        pid = kill_broker(settings)
        say(f"SIGKILLed broker pid {pid} at {figures['broker_kill_at']}s, round B {figures['broker_kill_progress']:.0%} sent")
        deadline = time.perf_counter() + args.broker_down
        while time.perf_counter() < deadline:
            workers.supervise()
            time.sleep(0.1)
        start_broker()
        figures["broker_back_at"] = clock()
        figures["broker_restart_s"] = round(figures["broker_back_at"] - figures["broker_kill_at"] - args.broker_down, 2)
        say(f"broker answering again at {figures['broker_back_at']}s")

        every = list(campaigns[0]) + list(campaigns[1])
        done = wait_for("completion of every campaign", lambda: completed(every), args.timeout)
        figures["seconds"] = clock()
        figures["completed"] = done
        figures["campaign_states"] = {str(c): s for c, s in asyncio.run(campaign_states(settings.postgres_dsn, every)).items()}
        time.sleep(args.settle)  # late replays, if any, reach the peers before they are counted
        metrics = {cid: asyncio.run(_hash(settings, keys.metrics_key(cid))) for cid in every}
        asyncio.run(drop_seen(settings, every))
        figures["dead_letters"] = asyncio.run(dead_letter_count(settings)) - dead_before
    finally:
        workers.stop_all()
        stop(peers)
    got = orjson.loads(peers_out.read_bytes())
    peers_out.unlink(missing_ok=True)
    seen = Counter(got["seen"])
    for k in (0, 1):
        for cid, channel in campaigns[k].items():
            if channel == "in_app":
                _, first, size = rounds[k]["in_app"]
                seen.update(asyncio.run(inbox_counts(settings.redis_url, cid, first, size)))

    lost = duplicates = 0
    by_stage: dict[str, dict] = {}
    expected_all: set[str] = set()
    for k in (0, 1):
        for cid, channel in campaigns[k].items():
            _, first, size = rounds[k][channel]
            wanted = expected_keys(cid, channel, first, size)
            expected_all.update(wanted)
            lost_here = sum(1 for key in wanted if seen.get(key, 0) == 0)
            dup_here = sum(seen[key] - 1 for key in wanted if seen.get(key, 0) > 1)
            lost += lost_here
            duplicates += dup_here
            m = metrics[cid]
            by_stage[f"{'AB'[k]}:{channel}"] = {
                "expected": size, "lost": lost_here, "duplicates": dup_here,
                "aggregate_sent": int(m.get("sent", 0)),
                "suppressed": {r.split(":", 1)[1]: int(v) for r, v in m.items() if r.startswith("suppressed:")},
                "failed": int(m.get("failed", 0)),
            }
    unexpected = sum(c for key, c in seen.items() if key not in expected_all)
    # Where the duplicates came from: the "sent" events of each duplicated message (one per
    # processing that reached the provider and reported it), placed in the run's phases.
    sents = asyncio.run(sent_events(settings, {c for k in (0, 1) for c in campaigns[k]}, events_before))
    t0 = time.time() - (time.perf_counter() - started)
    dup_keys = [key for key in expected_all if seen.get(key, 0) > 1]
    attribution: Counter = Counter()
    for key in dup_keys:
        times = sorted(sents.get(key, []))
        if len(times) < 2:
            attribution[f"{len(times)} sent event(s)"] += 1
        else:
            attribution[f"2nd sent event: {phase_of(times[1][0] - t0, figures)}"] += 1
    sent_twice = sum(1 for v in sents.values() if len(v) > 1)
    return {
        "recipients": 2 * n, "lost": lost, "duplicates": duplicates, **figures,
        "unexpected_at_peers": unexpected, "duplicate_attribution": dict(attribution),
        "messages_with_several_sent_events": sent_twice, "per_round_channel": by_stage, "workers": args.workers,
        "worker_exits": workers.exits, "email_provider": args.email_provider,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000, help="recipients per round (two rounds)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-kill-at", type=float, default=0.3, help="round A fraction sent when worker 1 dies")
    parser.add_argument("--restart-after", type=float, default=2.0, help="seconds before the killed worker restarts")
    parser.add_argument("--broker-kill-at", type=float, default=0.5, help="round B fraction sent when the broker dies")
    parser.add_argument("--broker-down", type=float, default=5.0, help="seconds the broker stays dead")
    parser.add_argument("--trigger-timeout", type=float, default=300.0)
    parser.add_argument("--round-timeout", type=float, default=300.0, help="wait for round A before launching B")
    parser.add_argument("--timeout", type=float, default=900.0, help="wait for every campaign after the broker kill")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--email-provider", choices=["smtp", "batch"], default="batch",
                        help="as bench/pipeline.py: batch is the SendGrid-shaped HTTP API, smtp one message per call")
    parser.add_argument("--default-stack", action="store_true", help="allow running against 127.0.0.1:9092")
    args = parser.parse_args()
    print(orjson.dumps(run(args)).decode(), flush=True)


if __name__ == "__main__":
    main()

"""A mixed campaign through every stage: launch → explode → gate → senders → peers, and delivery events.

    .venv/bin/python bench/pipeline.py --recipients 1000000 [--workers 2] [--email-provider smtp|batch]
                                       [--latencies latencies.csv]

Users are inserted straight into PostgreSQL (the launch path of a static segment reads
``segment_members`` and ``users``; the gate and the senders read profiles from PostgreSQL),
four static segments over disjoint ranges take email 60 %, push 30 %, SMS 8 %, in-app 2 %,
and one campaign per channel is created and launched through the real API (in-process).
``--workers`` Faust workers run the pipeline; the provider peers answer at once in a process
of their own (``--serve-peers``) and count every accepted message by its id (email Message-ID,
FCM data.message_id, SendGrid custom_args.message_id, SMS by recipient number) with its
arrival time. In-app messages land in Redis inboxes: they are counted by the aggregate.

The clock runs from the first launch until every campaign is completed (the aggregate's
completion). Prints one JSON line:
``{"recipients", "delivered", "suppressed", "seconds", "msgs_per_s", "p99_latency_s", "lost",
"duplicates", "email_smtp_per_s", "email_batch_http_per_s"}``. p99_latency_s is from a message's
"queued" event (the gate released it) to its arrival at the peer. The email rates are measured
by two extra email-only runs (``--email-only``) of ``--email-recipients`` each, one per provider.
Needs the stack up and no other Herald worker or peers running (they would share partitions/ports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from config import get_settings  # noqa: E402
from pipeline.pii import sealed  # noqa: E402
from pipeline.pii_keys import pii_keyring  # noqa: E402
from schemas.topics import DELIVERY_EVENTS  # noqa: E402
from schemas import keys  # noqa: E402

# The bench's synthetic users record no consent and it runs at any hour: no SMS opt-in or SMS quiet hours.
NOT_ABOUT_CONSENT = {"HERALD_GATE_OPT_IN_CHANNELS": "", "HERALD_GATE_CHANNEL_QUIET_HOURS": ""}
SHARES = {"email": 0.60, "push": 0.30, "sms": 0.08, "in_app": 0.02}
CONTENT = {
    "email": {"subject": "Bench {{ first_name }}", "html": "<p>Hello {{ first_name }}</p>", "text": "Hello"},
    "push": {"title": "Bench", "body": "Hello {{ first_name }}"},
    "sms": {"body": "Bench: hello {{ first_name }}"},
    "in_app": {"title": "Bench", "body": "Hello {{ first_name }}"},
}
MESSAGE_ID = re.compile(rb"Message-ID: <([0-9a-f-]{36})@", re.I)


# ---------------------------------------------------------------- peers (their own process)


def serve_peers(out: Path) -> None:
    """Every provider peer on the ports the settings name, counting accepted messages by id."""
    from urllib.parse import urlsplit

    from tests.peers import FcmPeer, LoopThread, SendGridPeer, SmtpPeer, TwilioPeer

    settings = get_settings()
    seen: Counter = Counter()
    arrivals: dict[str, float] = {}
    lock = threading.Lock()

    def note(channel: str, ids: list[str]) -> None:
        now = time.time()
        with lock:
            for i in ids:
                key = f"{channel}:{i}"
                seen[key] += 1
                arrivals.setdefault(key, now)

    class Smtp(SmtpPeer):
        def _accept(self, envelope):
            answer = super()._accept(envelope)
            if answer.startswith("250"):
                found = MESSAGE_ID.search(bytes(envelope.original_content or envelope.content or b"")[:4096])
                note("email", [found.group(1).decode() if found else f"?{self.count}"])
            return answer

    class Fcm(FcmPeer):
        def handle(self, request):
            answer = super().handle(request)
            if answer.status < 300:
                note("push", [request.json()["message"].get("data", {}).get("message_id", "?")])
            return answer

    class Twilio(TwilioPeer):
        def handle(self, request):
            answer = super().handle(request)
            if answer.status < 300:
                note("sms", [request.form().get("To", "?")])
            return answer

    class SendGrid(SendGridPeer):
        def handle(self, request):
            answer = super().handle(request)
            if answer.status < 300:
                body = request.json()
                note("email", [p.get("custom_args", {}).get("message_id", "?") for p in body["personalizations"]])
            return answer

    # On uvloop: the peers stand in for providers on other machines, so the less of the two
    # cores they take from the workers the better (aiosmtpd costs ~275 µs an email on asyncio's loop).
    import uvloop

    loop = LoopThread("bench-peers", loop_factory=uvloop.new_event_loop).start()
    sms_url, push_url, batch_url = (urlsplit(settings.sms_url), urlsplit(settings.push_url),
                                    urlsplit(settings.email_batch_url))
    peers = [
        Smtp(settings.smtp_host, settings.smtp_port, record=False).start(loop),
        Twilio(settings.sms_account_sid, settings.sms_auth_token, host=sms_url.hostname, port=sms_url.port,
               record=False).start(loop),
        Fcm("herald", settings.push_token, host=push_url.hostname, port=push_url.port, record=False).start(loop),
        SendGrid(settings.email_batch_key, host=batch_url.hostname, port=batch_url.port, record=False).start(loop),
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("peers ready", flush=True)
    while not stop.wait(0.5):
        pass
    for p in peers:
        p.stop()
    loop.stop()
    with lock:
        out.write_bytes(orjson.dumps({"seen": dict(seen), "arrivals": arrivals}))


# ---------------------------------------------------------------- setup


def sealed_contacts(keyring, email: str, phone: str | None = None) -> tuple:
    """(email_enc, email_idx, phone_enc, phone_idx) as ingestion stores them (pipeline/pii.py)."""
    return (*sealed(keyring, "email", email), *sealed(keyring, "phone", phone))


async def make_users(dsn: str, base: int, n: int) -> None:
    """Users with an email, a phone (encrypted, as ingestion stores them) and a push token each, by COPY (fast,
    and the launch path needs only rows)."""
    keyring = pii_keyring(get_settings())
    conn = await asyncpg.connect(dsn)
    try:
        ids = range(base, base + n)
        await conn.copy_records_to_table(
            "users", columns=["user_id", "email_enc", "email_idx", "phone_enc", "phone_idx", "first_name", "language",
                              "timezone", "push_tokens"],
            records=((u, *sealed_contacts(keyring, f"b{u}@bench.example", f"+1555{u % 10**7:07d}"), "Ann", "en",
                      "UTC", f"[\"tok-{u}\"]") for u in ids))
    finally:
        await conn.close()


async def make_segments(dsn: str, base: int, n: int, shares: dict[str, float]) -> dict[str, tuple[int, int, int]]:
    """One static segment per channel over disjoint id ranges: channel -> (segment_id, first id, size)."""
    conn = await asyncpg.connect(dsn)
    out = {}
    try:
        start = base
        channels = list(shares)
        for i, channel in enumerate(channels):
            size = n - (start - base) if i == len(channels) - 1 else int(round(n * shares[channel]))
            segment_id = await conn.fetchval(
                "INSERT INTO segments (name, criteria, dynamic, size) VALUES ($1, '{}'::jsonb, false, $2)"
                " RETURNING segment_id", f"bench-{channel}-{base}", size)
            await conn.copy_records_to_table("segment_members", columns=["segment_id", "user_id"],
                                             records=((segment_id, u) for u in range(start, start + size)))
            out[channel] = (segment_id, start, size)
            start += size
    finally:
        await conn.close()
    return out


def start_worker(env: dict[str, str], i: int) -> subprocess.Popen:
    settings = get_settings()
    log = open(settings.local_dir / "logs" / f"bench-pipeline-worker-{i}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "pipeline.worker", "worker", "-l", "warn", "--without-web"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env})


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


async def wait_group_stable(settings, group: str, timeout_s: float = 60.0, members: int = 1) -> None:
    """Until ``group`` is Stable with at least ``members`` members (every worker has joined)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                (response,) = await admin.describe_consumer_groups([group])
            except Exception:  # noqa: BLE001 - GroupCoordinatorNotAvailable on a brand-new broker
                await asyncio.sleep(0.5)
                continue
            _, _, state, _, _, joined, *_ = response.groups[0]  # (error_code, group_id, state, protocol_type, protocol, members)
            if state == "Stable" and len(joined) >= members:
                return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


# Every consumer group of the pipeline: launches go out only once each has all its workers,
# or a late joiner's rebalance lands in the middle of the measurement.
PIPELINE_GROUPS = ("", ".explode", ".control", ".aggregate", ".message_log", ".send_email", ".send_push",
                   ".send_sms", ".send_in_app")


async def campaign_states(dsn: str, ids: list[int]) -> dict[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT campaign_id, status FROM campaigns WHERE campaign_id = ANY($1::bigint[])", ids)
        return {r["campaign_id"]: r["status"] for r in rows}
    finally:
        await conn.close()


async def delivery_events(settings, campaign_ids: set[int], before: dict, status: str
                          ) -> AsyncIterator[tuple[str, float, int]]:
    """The ``status`` events of these campaigns written to delivery-events since ``before``, as
    (the peers' key for the message, epoch seconds, partition), up to the topic's end now."""
    from aiokafka import AIOKafkaConsumer

    from tests.helpers.kafka import end_offsets

    after = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        wanted = {tp: end for tp, end in after.items() if end > before.get(tp, 0)}
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, before.get(tp, 0))
        while wanted:
            for tp, messages in (await consumer.getmany(timeout_ms=1000, max_records=5000)).items():
                for m in messages:
                    for e in orjson.loads(m.value).get("events", []):
                        if e.get("status") == status and e.get("campaign_id") in campaign_ids:
                            # The peers count SMS by recipient number, everything else by message id.
                            key = (f"sms:+1555{e['user_id'] % 10**7:07d}" if e["channel"] == "sms"
                                   else f"{e['channel']}:{e['message_id']}")
                            yield key, _epoch(e["at"]), m.partition
                    if m.offset + 1 >= wanted.get(tp, 0):
                        wanted.pop(tp, None)
    finally:
        await consumer.stop()


async def queued_times(settings, campaign_ids: set[int], before: dict) -> dict[str, float]:
    """Each message's "queued" time, from delivery-events written since ``before``: peers' key -> epoch s."""
    return {key: at async for key, at, _ in delivery_events(settings, campaign_ids, before, "queued")}


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- one run


def run(recipients: int, workers: int, shares: dict[str, float], email_provider: str,
        latencies_csv: Path | None = None) -> dict:
    from tests.helpers.kafka import end_offsets
    from tests.helpers.e2e import Api

    settings = get_settings()
    (settings.local_dir / "logs").mkdir(parents=True, exist_ok=True)
    base = 5 * 10**12 + random.randrange(10**6) * 10**7
    t0 = time.perf_counter()
    asyncio.run(make_users(settings.postgres_dsn, base, recipients))
    segments = asyncio.run(make_segments(settings.postgres_dsn, base, recipients, shares))
    setup_s = time.perf_counter() - t0

    peers_out = settings.local_dir / f"bench-peers-{base}.json"
    peers = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-peers", str(peers_out)],
                             cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    assert peers.stdout is not None and b"peers ready" in peers.stdout.readline()
    # The providers answer at once here; the channels' rate limits (a product setting that
    # protects real providers) are lifted so that the figure is the pipeline's own.
    # And the bench's synthetic users record no consent and it runs at any hour: no SMS opt-in or SMS quiet hours.
    env = {"HERALD_EMAIL_PROVIDER": email_provider, **{f"HERALD_RATE_{c.upper()}": "1000000" for c in SHARES},
           **NOT_ABOUT_CONSENT}
    procs = [start_worker(env, i) for i in range(workers)]
    try:
        for suffix in PIPELINE_GROUPS:
            asyncio.run(wait_group_stable(settings, settings.app_id + suffix, members=workers))
        events_before = asyncio.run(end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name))
        with Api(settings) as api:
            ids = {}
            for channel, (segment_id, _, _) in segments.items():
                body = {"name": f"bench-{channel}-{base}", "type": "immediate", "channels": [channel],
                        "target_segment_id": segment_id, "content": {channel: CONTENT[channel]}}
                ids[api.call("POST", "/api/v1/campaigns", 201, json=body)["campaign_id"]] = channel
            started, started_epoch = time.perf_counter(), time.time()
            for campaign_id in ids:
                api.launch(campaign_id)
        while True:
            states = asyncio.run(campaign_states(settings.postgres_dsn, list(ids)))
            if all(s == "completed" for s in states.values()):
                break
            if time.perf_counter() - started > 3600:
                raise SystemExit(f"not completed after an hour: {states}")
            time.sleep(0.25)
        seconds = time.perf_counter() - started
        metrics = {cid: asyncio.run(_hash(settings, keys.metrics_key(cid))) for cid in ids}
        asyncio.run(drop_seen(settings, ids))
    finally:
        for p in procs:
            stop(p)
        stop(peers)
    got = orjson.loads(peers_out.read_bytes())
    peers_out.unlink(missing_ok=True)
    seen: dict[str, int] = got["seen"]
    arrivals: dict[str, float] = got["arrivals"]
    queued = asyncio.run(queued_times(settings, set(ids), events_before))
    latencies = np.array([arrivals[k] - queued[k] for k in arrivals if k in queued])
    by_channel: dict[str, list[float]] = {}
    for k in arrivals:
        if k in queued:
            by_channel.setdefault(k.split(":", 1)[0], []).append(arrivals[k] - queued[k])
    if latencies_csv is not None:
        with latencies_csv.open("w") as out:
            out.write("channel,queued_s,arrived_s\n")
            for k, at in arrivals.items():
                if k in queued:
                    out.write(f"{k.split(':', 1)[0]},{queued[k] - started_epoch:.3f},{at - started_epoch:.3f}\n")
    sent = sum(m.get("sent", 0) for m in metrics.values())
    suppressed = sum(m.get("suppressed", 0) for m in metrics.values())
    in_app = sum(m.get("sent", 0) for cid, m in metrics.items() if ids[cid] == "in_app")
    at_peers = len(seen) + int(in_app)
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    expected = recipients - int(suppressed)
    return {
        "recipients": recipients, "delivered": at_peers, "suppressed": int(suppressed),
        "seconds": round(seconds, 2), "msgs_per_s": round(recipients / seconds),
        "p99_latency_s": round(float(np.percentile(latencies, 99)), 3) if len(latencies) else None,
        "lost": max(0, expected - at_peers), "duplicates": duplicates, "aggregate_sent": int(sent),
        "workers": workers, "setup_s": round(setup_s, 1),
        "p99_latency_s_by_channel": {ch: round(float(np.percentile(v, 99)), 3) for ch, v in sorted(by_channel.items())},
        "p50_latency_s": round(float(np.percentile(latencies, 50)), 3) if len(latencies) else None,
    }


async def drop_seen(settings, campaign_ids) -> int:
    """Delete the aggregate's per-message "seen" buckets of finished bench campaigns (their counters
    stay). They live 14 days (metrics.SEEN_TTL_S): a day of benches left ~2M keys, 640 MB, in
    the dev stack's Redis, whose AOF rewrites then took CPU from the next runs."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(settings.redis_url)
    dropped = 0
    try:
        for cid in campaign_ids:
            found = [k async for k in r.scan_iter(match=keys.seen_pattern(cid), count=10_000)]
            for i in range(0, len(found), 10_000):
                dropped += await r.unlink(*found[i:i + 10_000])
    finally:
        await r.aclose()
    return dropped


async def _hash(settings, key: str) -> dict[str, float]:
    import redis.asyncio as aioredis

    r = aioredis.from_url(settings.redis_url)
    try:
        return {k.decode(): float(v) for k, v in (await r.hgetall(key)).items()}
    finally:
        await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--email-recipients", type=int, default=100_000, help="size of each email-only run")
    parser.add_argument("--skip-email-runs", action="store_true")
    parser.add_argument("--email-provider", choices=("smtp", "batch"), default="batch",
                        help="email provider of the mixed run (the spec's batching: SendGrid-shaped HTTP)")
    parser.add_argument("--latencies", type=Path, metavar="CSV",
                        help="also write each message's channel, release and arrival (s since the launch)")
    parser.add_argument("--serve-peers", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peers:
        serve_peers(args.serve_peers)
        return
    figures = run(args.recipients, args.workers, SHARES, args.email_provider, args.latencies)
    figures["email_provider"] = args.email_provider
    if not args.skip_email_runs:
        for provider, name in (("smtp", "email_smtp_per_s"), ("batch", "email_batch_http_per_s")):
            email = run(args.email_recipients, args.workers, {"email": 1.0}, provider)
            figures[name] = email["msgs_per_s"]
            figures[f"{name}_lost"] = email["lost"]
    print(orjson.dumps(figures).decode(), flush=True)


if __name__ == "__main__":
    main()

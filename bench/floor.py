"""The CPU a delivered message costs the servers and client libraries alone, with no Herald code in between.

    .venv/bin/python bench/floor.py [--messages 200000]

The pipeline target is 20,000 messages/s on this two-core machine with Kafka, Cassandra,
Redis and PostgreSQL on it too. This measures what no work of ours inside the workers can
remove, each part alone on the running stack (``make up``; stop any worker and bench first):

- **cassandra**: one ``message_log`` row per delivered message (the "sent" row), written as
  the aggregate writes it (``pipeline.aggregate_io.MessageLog``: unlogged batches of up to 100
  rows per (campaign, day, shard) partition, 64 in flight). Server CPU from ``/proc`` of the
  Cassandra JVM over the writes and the 5 s after them (memtable flushes; later compactions
  are not counted, so this is a lower bound), and the driver's CPU in this process.
- **kafka**: the message's Kafka traffic with no Faust in between: four event slots produced
  (message request, outbox entry, "queued" and "sent" delivery events) and six consumed
  (gate, sender, and the aggregate's and message_log's two groups each reading both events),
  as JSON records of 100 events of ~230 bytes, the way the stages batch them. Broker CPU
  and aiokafka's CPU in this process.
- **redis**: the aggregate's counter fold (``pipeline.aggregate_io.Folder``) of the message's two
  events, in calls of 2,000 events. Redis server CPU.
- **provider**: one FCM-shaped POST per push or SMS message (38 % of the spec's mix; email
  goes 1,000 to a batch request, in-app to Redis) with the adapters' HTTP client
  (``pipeline.channels.http``) against the test peer in its own process: the peer's CPU
  (a stand-in on this machine; a real provider's is elsewhere) and the client's.

Prints one JSON line: µs of CPU per delivered message for each part, server and client, and
``cores_at_20k``: the cores those parts alone would take at 20,000 messages/s.

``--smtp`` measures the email-only SMTP target (4,000 emails/s) the same way, as its own part:

- **smtp**: one SMTP transaction (MAIL, RCPT, DATA) per email of ready-made MIME bytes
  (as the senders build them) with aiosmtplib over ``--smtp-pool`` kept-open
  connections, against the test peer (aiosmtpd, on uvloop, in its own process, as in
  bench/senders.py): the peer's CPU and the client's. ``smtp_cores_at_4k`` adds the
  message's cassandra, kafka and redis parts (an email is a message like any other) and
  gives the cores they alone would take at 4,000 emails/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))

from config import get_settings  # noqa: E402
from schemas import keys  # noqa: E402
from procs import Proc  # noqa: E402  scripts/procs.py
from schemas.messages import DeliveryEvent  # noqa: E402
from senders import cpu_seconds  # noqa: E402  bench/senders.py
PER_REQUEST_SHARE = 0.38  # push 30 % + SMS 8 % of the spec's mix: one provider request per message
TARGET = 20_000
SMTP_TARGET = 4_000


def server_pid(name: str) -> int:
    """The pid of a stack server (kafka, cassandra, redis) from the pid file scripts/stack.py wrote."""
    proc = Proc(get_settings().local_dir / "run", name)
    pid = proc.pid()
    if pid is None:
        raise SystemExit(f"no running {name} recorded in {proc.pid_file}: is the stack up (make up)?")
    return pid


class Meter:
    """Server CPU (a pid) and this process' CPU over a block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Meter:
        self.server, self.client, self.wall = cpu_seconds(self.pid), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server = cpu_seconds(self.pid) - self.server
        self.client = time.process_time() - self.client
        self.wall = time.perf_counter() - self.wall


def events(n: int, status: str, campaign_id: int) -> list[DeliveryEvent]:
    now = datetime.now(timezone.utc)
    channels = ["email"] * 60 + ["push"] * 30 + ["sms"] * 8 + ["in_app"] * 2
    return [DeliveryEvent(message_id=uuid.uuid4(), campaign_id=campaign_id, user_id=1_000_000 + i,
                          channel=channels[i % 100], variant="A", status=status, cost=0.001,
                          provider_id=f"p-{i}", at=now) for i in range(n)]


def per_message(m: Meter, n: int) -> dict[str, float]:
    return {"server_us": round(m.server / n * 1e6, 1), "client_us": round(m.client / n * 1e6, 1),
            "seconds": round(m.wall, 2)}


async def cassandra(n: int) -> dict[str, float]:
    from pipeline.aggregate_io import MessageLog
    from pipeline.worker_clients import WorkerClients

    settings = get_settings()
    resources = WorkerClients(settings)
    log = MessageLog(await resources.cassandra(), settings.cassandra_keyspace)
    sent = events(n, "sent", random.randrange(10**12, 10**13))
    await log.write(sent[:2000])  # warm: prepared statement, connections
    with Meter(server_pid("cassandra")) as m:
        for i in range(2000, n, 2000):
            await log.write(sent[i:i + 2000])
        await asyncio.sleep(5)
    await resources.close()
    return per_message(m, n - 2000)


async def kafka(n: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    settings = get_settings()
    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=8, replication_factor=1)])
    await admin.close()
    sample = [e.model_dump(mode="json") for e in events(100, "sent", 1)]
    record = orjson.dumps({"events": sample})
    records_out = 4 * n // 100  # four slots written per message
    broker = server_pid("kafka")

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, acks="all", linger_ms=5,
                                max_batch_size=1_048_576)
    await producer.start()
    with Meter(broker) as produced:
        pending = [await producer.send(topic, record, partition=i % 8) for i in range(records_out)]
        await asyncio.gather(*pending)
    await producer.stop()

    async def consume_all(group: str, want: int) -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_brokers, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        got = 0
        while got < want:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for tp, msgs in batches.items():
                got += len(msgs)
            await consumer.commit()
        await consumer.stop()

    with Meter(broker) as consumed:
        # Six slots read per message, four written: read the written records 1.5 times over.
        await consume_all(f"{topic}-a", records_out)
        await consume_all(f"{topic}-b", records_out // 2)
    total = Meter(broker)
    total.server, total.client = produced.server + consumed.server, produced.client + consumed.client
    total.wall = produced.wall + consumed.wall
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    await admin.delete_topics([topic])
    await admin.close()
    return per_message(total, n)


async def redis(n: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    from pipeline.aggregate_io import Folder
    from schemas.keys import OPEN_CAMPAIGNS

    settings = get_settings()
    client = aioredis.from_url(settings.redis_url)
    folder = Folder(client)
    campaign = random.randrange(10**12, 10**13)
    queued = events(n, "queued", campaign)
    sent = [e.model_copy(update={"status": "sent"}) for e in queued]
    await folder.fold(queued[:1000])
    with Meter(server_pid("redis")) as m:
        for batch in (queued, sent):
            for i in range(1000 if batch is queued else 0, n, 2000):
                await folder.fold(batch[i:i + 2000])
    # Leave nothing behind: the campaign's counters and per-message bits.
    async for key in client.scan_iter(match=keys.campaign_pattern(campaign), count=10_000):
        await client.delete(key)
    await client.srem(OPEN_CAMPAIGNS, campaign)
    await client.aclose()
    return per_message(m, n)


async def provider(n: int) -> dict[str, float]:
    from pipeline.channels.http import HttpClient

    from http_client import BODY, PEER, TOKEN

    requests = int(n * PER_REQUEST_SHARE)
    # The peer on asyncio's own loop, as bench/pipeline.py runs it (http_client's runs on uvloop).
    on_uvloop = "import uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
    if on_uvloop not in PEER:
        raise SystemExit("bench/http_client.py's PEER changed: update the uvloop lines removed here")
    peer = subprocess.Popen([sys.executable, "-c", PEER.replace(on_uvloop, "")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert peer.stdout is not None
        url = f"http://127.0.0.1:{int(peer.stdout.readline())}/v1/projects/herald/messages:send"
        client = HttpClient(get_settings(), 8, headers={"Authorization": f"Bearer {TOKEN}"})
        json_type = {"Content-Type": "application/json"}
        left = 0

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                answer = await client.post(url, content=BODY, headers=json_type)
                if answer.status_code != 200:
                    raise SystemExit(f"peer answered {answer.status_code}")

        left = 2000
        await asyncio.gather(*(worker() for _ in range(64)))
        left = requests
        with Meter(peer.pid) as m:
            await asyncio.gather(*(worker() for _ in range(64)))
        await client.aclose()
    finally:
        peer.kill()
        peer.wait()
    return per_message(m, n)  # per delivered message of the mix, not per request


async def smtp(n: int, pool: int = 8) -> dict[str, float]:
    import aiosmtplib

    from senders import start_peer

    from pipeline.channels.mime import build_email

    peer, port = start_peer("SmtpPeer")
    html = "<html><body><h1>Hello Zoé</h1>" + "<p>Use <b>SUN20</b> before Sunday.</p>" * 30 + "</body></html>"
    raw = build_email(sender="Herald <news@herald.example>", to="u1@example.com", subject="Zoé, 20% off",
                      text="Hello Zoé, use SUN20 before Sunday. " * 20, html=html,
                      message_id=str(uuid.uuid4()), headers={})
    try:
        connections = []
        for _ in range(pool):
            c = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
            await c.connect()
            await c.ehlo()
            connections.append(c)
        left = 0

        async def worker(c) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                # The cheapest way aiosmtplib offers (as pipeline/channels/email_smtp.py sends):
                # the commands written directly, not sendmail's address parsing and per-read timers.
                replies = [await c.execute_command(b"MAIL", b"FROM:<news@herald.example>", timeout=None),
                           await c.execute_command(b"RCPT", b"TO:<u1@example.com>", timeout=None),
                           await c.data(raw, timeout=None)]
                if any(r.code != 250 for r in replies):
                    raise SystemExit(f"peer answered {[(r.code, r.message) for r in replies]}")

        left = 1000
        await asyncio.gather(*(worker(c) for c in connections))
        left = n
        with Meter(peer.pid) as m:
            await asyncio.gather(*(worker(c) for c in connections))
        for c in connections:
            await c.quit()
    finally:
        peer.kill()
        peer.wait()
    return {**per_message(m, n), "bytes": len(raw), "pool": pool, "per_s": round(n / m.wall)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--only", choices=["cassandra", "kafka", "redis", "provider"], action="append")
    parser.add_argument("--smtp", type=int, metavar="EMAILS", help="also the SMTP part, over this many emails")
    parser.add_argument("--smtp-pool", type=int, default=8)
    args = parser.parse_args()
    parts = {"cassandra": cassandra, "kafka": kafka, "redis": redis, "provider": provider}
    out: dict[str, object] = {"messages": args.messages}
    for name, part in parts.items():
        if args.only and name not in args.only:
            continue
        out[name] = asyncio.run(part(args.messages))
    server = sum(v["server_us"] for v in out.values() if isinstance(v, dict))
    client = sum(v["client_us"] for v in out.values() if isinstance(v, dict))
    out["server_us"] = round(server, 1)
    out["client_us"] = round(client, 1)
    out["cores_at_20k"] = round((server + client) * TARGET / 1e6, 2)
    if args.smtp:
        mail = asyncio.run(smtp(args.smtp, args.smtp_pool))
        out["smtp"] = mail
        shared = sum(out[k]["server_us"] + out[k]["client_us"] for k in ("cassandra", "kafka", "redis") if k in out)
        out["smtp_cores_at_4k"] = round((mail["server_us"] + mail["client_us"] + shared) * SMTP_TARGET / 1e6, 2)
    out["cores"] = os.cpu_count()
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()

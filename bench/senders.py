"""The send stage alone: outbox batches in, provider calls out, as the send_email agent runs them.

    .venv/bin/python bench/senders.py [--emails 20000] [--batch 500] [--pool 8] [--uvloop]

Each provider peer runs in its OWN process (aiosmtpd SMTP; the SendGrid-shaped
HTTP peer), on uvloop, so the figures are the client's, as in production. What is timed is
``pipeline.send.sender.Sender.handle`` over encoded MessageBatch records: status
check, idempotency ledger (Redis), per-recipient render (subject, HTML with a
tracked link and the unsubscribe link, text), unsubscribe token, link rewriting
and open pixel, MIME bytes (SMTP) or mail/send JSON (batch), the token bucket
(one Lua call per chunk; a high rate here so the provider is the limit), the
provider calls, and the ledger writes. Profiles come from memory and events go
nowhere (the Kafka and PostgreSQL legs are the pipeline bench's). Prints one JSON line.
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
from pathlib import Path

import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import get_settings  # noqa: E402
from schemas.topics import OUTBOX  # noqa: E402
from schemas import keys  # noqa: E402
from pipeline.channels import make_channel  # noqa: E402
from pipeline.codecs import RawRecord  # noqa: E402
from pipeline.send.decisions import SendPlan, plan_content  # noqa: E402
from pipeline.send.pacing import TokenBucket  # noqa: E402
from pipeline.send.sender import Sender, send_chunk  # noqa: E402
from pipeline.templates import CompiledTemplate  # noqa: E402
from schemas.messages import MessageBatch, Recipient  # noqa: E402

CPU_US = 0.0
CONTENT = {
    "subject": "{{ first_name | default('Hi') }}, {{ discount }} off for {{ attributes.plan | title }} members",
    "html": "<html><body><h1>Hello {{ first_name }}</h1><p>Use <b>{{ code }}</b> before Sunday.</p>"
            "<p><a href=\"https://shop.example/sale?u={{ user_id }}\">Shop now</a></p>"
            "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>",
    "text": "Hello {{ first_name }}, use {{ code }} before Sunday. https://shop.example/sale?u={{ user_id }}",
}

# The peer on uvloop: a pure-Python aiosmtpd on asyncio tops out near 3,100 emails/s at 97 % of a core
# (measured), so without it the bench would measure the test server, not the sender.
PEER = """
import asyncio, sys, time
import uvloop
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
from tests.peers import {cls}
peer = {cls}(record=False).start()
print(peer.port, flush=True)
sys.stdin.read()
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_peer(cls: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", PEER.format(cls=cls)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    port = int(proc.stdout.readline())
    return proc, port


class Profiles:
    async def fetch(self, user_ids):
        return {u: {"user_id": u, "email": f"u{u}@example.com", "first_name": "Zoé", "language": "en",
                    "attributes": {"plan": "gold"}} for u in user_ids}


class Plans:
    def __init__(self, plan: SendPlan) -> None:
        self.plan = plan

    async def get(self, campaign_id: int) -> SendPlan:
        return self.plan


async def run(settings, emails: int, batch_size: int, pool: int) -> tuple[float, int]:
    redis = Redis.from_url(settings.redis_url)
    cid = random.randrange(9 * 10**17, 10**18)
    options = {"pool_size": pool} if settings.email_provider == "smtp" else {"connections": 4}
    adapter = make_channel("email", settings, redis, **options)
    plan = SendPlan(cid, "email", CompiledTemplate(plan_content("email", CONTENT, None)),
                    {"discount": "20%", "code": "SUN20"}, 0.001)
    sent = 0

    async def events(partition, batch):
        nonlocal sent
        sent += sum(1 for e in batch.events if e.status == "sent")

    async def dead(letters):
        if letters:
            print(f"dead letters: {letters[0].reason}", file=sys.stderr)

    sender = Sender(settings, "email", redis, adapter, Plans(plan), Profiles(), events, dead,
                    bucket=TokenBucket(redis, "bench-email", 1e7), chunk=send_chunk(settings, "email"))
    base = 10**12
    raws = []
    for i in range(0, emails, batch_size):
        batch = MessageBatch(batch_id=f"bench:{cid}:{i}", campaign_id=cid, channel="email", partition=0,
                             recipients=[Recipient(user_id=base + j) for j in range(i, min(emails, i + batch_size))])
        raws.append(RawRecord(OUTBOX["email"].name, 0, i, None, orjson.dumps(batch.model_dump(mode="json"))))
    await redis.set(keys.status_key(cid), "active")
    started, cpu = time.perf_counter(), time.process_time()
    in_flight = asyncio.Semaphore(16)  # as consume_concurrently runs them: each batch a task, 16 at once

    async def one(raw):
        async with in_flight:
            await sender.handle([raw])

    await asyncio.gather(*(one(raw) for raw in raws))
    seconds = time.perf_counter() - started
    global CPU_US
    CPU_US = (time.process_time() - cpu) / max(1, emails) * 1e6
    await adapter.aclose()
    await redis.delete(keys.status_key(cid), keys.ledger_key(cid, "email", "send", 0), keys.bucket_key("bench-email"))
    await redis.aclose()
    return seconds, sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--emails", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pool", type=int, default=8, help="SMTP connections kept open")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (faust worker -L uvloop)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    base = get_settings()
    smtp, smtp_port = start_peer("SmtpPeer")
    grid, grid_port = start_peer("SendGridPeer")
    try:
        smtp_settings = base.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": smtp_port,
                                                "signing_secret": "bench-secret-0123456789abcdef"})
        peer_cpu = cpu_seconds(smtp.pid)
        smtp_s, smtp_sent = asyncio.run(run(_with(smtp_settings, "smtp"), args.emails, args.batch, args.pool))
        smtp_cpu, smtp_peer_pct = CPU_US, (cpu_seconds(smtp.pid) - peer_cpu) / smtp_s * 100
        grid_settings = smtp_settings.model_copy(update={
            "email_batch_url": f"http://127.0.0.1:{grid_port}/v3/mail/send", "email_batch_key": "herald-local"})
        peer_cpu = cpu_seconds(grid.pid)
        grid_s, grid_sent = asyncio.run(run(_with(grid_settings, "batch"), args.emails * 2, args.batch, args.pool))
        grid_cpu, grid_peer_pct = CPU_US, (cpu_seconds(grid.pid) - peer_cpu) / grid_s * 100
    finally:
        for proc in (smtp, grid):
            proc.stdin.close()
            proc.wait(timeout=10)
    print(json.dumps({
        "emails_smtp": smtp_sent, "smtp_seconds": round(smtp_s, 2), "smtp_emails_per_s": round(smtp_sent / smtp_s),
        "smtp_pool": args.pool, "smtp_client_cpu_us_per_email": round(smtp_cpu),
        "smtp_peer_cpu_pct": round(smtp_peer_pct),
        "emails_batch_http": grid_sent, "batch_http_seconds": round(grid_s, 2),
        "batch_http_emails_per_s": round(grid_sent / grid_s), "batch_http_client_cpu_us_per_email": round(grid_cpu),
        "batch_http_peer_cpu_pct": round(grid_peer_pct),
        "batch_size": args.batch, "uvloop": args.uvloop, "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }))


def _with(settings, provider: str):
    """Settings with ``email_provider`` set, whether or not Settings declares the field yet."""
    if "email_provider" in type(settings).model_fields:
        return settings.model_copy(update={"email_provider": provider})
    copy = settings.model_copy()
    object.__setattr__(copy, "email_provider", provider)
    return copy


if __name__ == "__main__":
    main()

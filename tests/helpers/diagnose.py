"""What a flow test prints when the worker did not do what it waited for: the worker's log tail, the
consumer groups' lag per topic and the flows' progress counters. CI keeps only pytest's output, so a
timeout there must carry what is needed to tell a stuck stage from a wrong decision."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis import asyncio as aioredis

from config import Settings

LOG_LINES = 60


def worker_log_tail(settings: Settings, lines: int = LOG_LINES) -> str:
    """The last lines of the most recently written worker log (tests/helpers/workers.py writes them)."""
    logs = sorted((settings.local_dir / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return "(no worker log)"
    latest: Path = logs[-1]
    text = latest.read_bytes()[-200_000:].decode("utf-8", "replace").splitlines()
    return f"── {latest.name} (last {lines} lines) ──\n" + "\n".join(line[:400] for line in text[-lines:])


async def group_lags(settings: Settings) -> str:
    """Committed offset against the end, per group and topic, for the app's consumer groups."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers, request_timeout_ms=5000)
    await admin.start()
    try:
        groups = sorted(g[0] for g in await admin.list_consumer_groups() if g[0].startswith(settings.app_id))
        from aiokafka import AIOKafkaConsumer
        probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers)
        await probe.start()
        try:
            out = []
            for group in groups:
                committed = await admin.list_consumer_group_offsets(group)
                tps = [tp for tp in committed if isinstance(tp, TopicPartition)]
                if not tps:
                    continue
                ends = await probe.end_offsets(tps)
                by_topic: dict[str, int] = {}
                for tp in tps:
                    by_topic[tp.topic] = by_topic.get(tp.topic, 0) + max(0, ends[tp] - committed[tp].offset)
                lagging = {t: n for t, n in by_topic.items() if n}
                out.append(f"{group}: {lagging or 'caught up'}")
            return "\n".join(out)
        finally:
            await probe.stop()
    finally:
        await admin.close()


async def flow_progress(settings: Settings, limit: int = 12) -> str:
    redis = aioredis.from_url(settings.redis_url)
    try:
        def newest_last(key: bytes) -> tuple[str, int]:  # flow:c42:progress: campaigns, then journeys, by id
            flow = key.decode().split(":")[1]
            return flow[:1], int(flow[1:]) if flow[1:].isdigit() else 0
        keys = sorted([k async for k in redis.scan_iter("flow:*:progress", count=1000)], key=newest_last)
        keys = [k for k in keys if k.startswith(b"flow:c")][-limit:] + [k for k in keys if k.startswith(b"flow:j")][-limit:]
        rows = []
        for key in keys:
            counts = {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}
            rows.append(f"{key.decode()}: {counts}")
        return "\n".join(rows) or "(no flow progress)"
    finally:
        await redis.aclose()


async def explain_timeout(settings: Settings) -> str:
    """Everything above, each part on its own (one that fails says why instead)."""
    parts = []
    for title, part in (("consumer groups", group_lags(settings)), ("flows", flow_progress(settings))):
        try:
            parts.append(f"── {title} ──\n" + await asyncio.wait_for(part, 20))
        except Exception as exc:  # a diagnosis must not hide the failure it explains
            parts.append(f"── {title} ── unavailable: {exc!r}")
    parts.append(worker_log_tail(settings))
    return "\n".join(parts)

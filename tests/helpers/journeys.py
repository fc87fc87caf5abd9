"""Journey test helpers: flows written to PostgreSQL as the API publishes them, the flows' clock, and
the records upstream systems and the tracking API write (user events, opens and clicks)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson
from redis import asyncio as aioredis

from config import Settings, get_settings
from pipeline.journeys.model import parse_journey
from schemas.keys import FLOWS_CHANGED, TEST_CLOCK
from schemas.messages import message_id
from schemas.topics import DELIVERY_EVENTS, USER_EVENTS
from tests.helpers.kafka import eventually, produce
from tests.helpers.pipeline import DEFAULT_CONTENT
from tests.peers import FcmPeer, SmtpPeer, TwilioPeer

DAY = 86_400


async def publish_flow(pool: asyncpg.Pool, redis: aioredis.Redis, definition: Mapping[str, Any],
                       journey_id: int | None = None, content: Mapping[str, Mapping] | None = None) -> tuple[int, int, dict]:
    """A journey version as the API publishes it: the version row, one campaign per send node, the journey
    live on it, the workers told. Returns (journey_id, version, {send node: campaign_id})."""
    journey = parse_journey(definition)
    async with pool.acquire() as conn, conn.transaction():
        if journey_id is None:
            journey_id = await conn.fetchval(
                "INSERT INTO journeys (name, status, draft) VALUES ($1, 'draft', $2::jsonb) RETURNING journey_id",
                definition["name"], orjson.dumps(definition).decode())
        version = await conn.fetchval("SELECT coalesce(max(version), 0) + 1 FROM journey_versions WHERE journey_id = $1",
                                      journey_id)
        steps = {}
        for node in journey.sends():
            body = (content or {}).get(node.id) or DEFAULT_CONTENT[node.channel]
            ab = {"enabled": True, "variants": [{"id": v, "weight": w} for v, w in node.variants]} if node.variants else {}
            steps[node.id] = await conn.fetchval(
                "INSERT INTO campaigns (name, type, status, channels, content, ab_test_config, journey_id, journey_version,"
                " journey_node, schedule) VALUES ($1, 'journey', 'active', $2, $3::jsonb, $4::jsonb, $5, $6, $7, $8::jsonb)"
                " RETURNING campaign_id",
                f"test-journey-{journey_id}-v{version}-{node.id}", [node.channel],
                orjson.dumps({node.channel: body}).decode(), orjson.dumps(ab).decode(), journey_id, version, node.id,
                orjson.dumps({} if journey.quiet_hours is None else {"quiet_hours": journey.quiet_hours}).decode())
        await conn.execute("INSERT INTO journey_versions (journey_id, version, definition, step_campaigns)"
                           " VALUES ($1, $2, $3::jsonb, $4::jsonb)", journey_id, version,
                           orjson.dumps(definition).decode(), orjson.dumps(steps).decode())
        await conn.execute("UPDATE journeys SET status = 'live', live_version = $2, published_at = now() WHERE journey_id = $1",
                           journey_id, version)
    await redis.incr(FLOWS_CHANGED)
    return journey_id, version, steps


async def stop_flow(pool: asyncpg.Pool, redis: aioredis.Redis, journey_id: int) -> None:
    await pool.execute("UPDATE journeys SET status = 'stopped', stopped_at = now() WHERE journey_id = $1", journey_id)
    await redis.incr(FLOWS_CHANGED)


async def remove_flow(pool: asyncpg.Pool, redis: aioredis.Redis, journey_id: int) -> None:
    await pool.execute("DELETE FROM campaigns WHERE journey_id = $1", journey_id)
    await pool.execute("DELETE FROM journeys WHERE journey_id = $1", journey_id)
    keys = [k async for k in redis.scan_iter(f"flow:j{journey_id}:*", count=10_000)]
    if keys:
        await redis.delete(*keys)
    await redis.incr(FLOWS_CHANGED)


async def advance_clock(redis: aioredis.Redis, seconds: float) -> float:
    """Run the flows' clock ahead (test workers: HERALD_TEST_CLOCK=1); returns the new offset."""
    return float(await redis.incrbyfloat(TEST_CLOCK, seconds))


async def clock_now(redis: aioredis.Redis) -> float:
    return time.time() + float(await redis.get(TEST_CLOCK) or 0)


def fresh_ids(n: int) -> list[int]:
    base = random.randrange(10**12, 9 * 10**15)
    return list(range(base, base + n * 7, 7))


async def send_events(settings: Settings, events: Sequence[tuple[int, str, dict[str, Any]]], at: float | None = None,
                      topic: str = USER_EVENTS.name, ids: Sequence[str] | None = None) -> None:
    """User events (user, name, properties) on ``user-events``, keyed by user, as upstream systems write them."""
    from datetime import datetime, timezone
    when = datetime.fromtimestamp(at if at is not None else time.time(), tz=timezone.utc).isoformat()
    records = []
    for i, (uid, name, props) in enumerate(events):
        value: dict[str, Any] = {"user_id": uid, "name": name, "occurred_at": when, "properties": props}
        if ids is not None:
            value["event_id"] = ids[i]
        records.append((str(uid).encode(), orjson.dumps(value)))
    await produce(settings.kafka_brokers, topic, records)


async def engage(settings: Settings, uid: int, campaign_id: int, channel: str, step: str, status: str) -> None:
    """An open or click of a journey's message, as the tracking API writes it (keyed by user)."""
    event = {"message_id": str(message_id(campaign_id, uid, channel, step)), "campaign_id": campaign_id,
             "user_id": uid, "channel": channel, "step": step, "variant": None, "status": status,
             "reason": None, "provider_id": None, "cost": 0.0, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    await produce(settings.kafka_brokers, DELIVERY_EVENTS.name, [(str(uid).encode(), orjson.dumps({"events": [event]}))])


async def reset_clock(redis: aioredis.Redis) -> None:
    await redis.delete(TEST_CLOCK)


class Providers:
    def __init__(self) -> None:
        self.smtp, self.sms, self.push = SmtpPeer().start(), TwilioPeer().start(), FcmPeer().start()

    def env(self) -> dict[str, str]:
        return {"HERALD_SMTP_HOST": self.smtp.host, "HERALD_SMTP_PORT": str(self.smtp.port), "HERALD_SMS_URL": self.sms.url,
                "HERALD_PUSH_URL": self.push.url, "HERALD_EMAIL_PROVIDER": "smtp", "HERALD_TEST_CLOCK": "1",
                "HERALD_JOURNEY_SEGMENT_S": "1"}

    def received(self, users: set[int]) -> Counter:
        """(user, channel) → messages the providers got for these users."""
        got: Counter = Counter()
        for m in list(self.smtp.messages):
            for rcpt in m.rcpt_tos:
                local = rcpt.split("@")[0].removeprefix("u")
                if local.isdigit() and int(local) in users:
                    got[(int(local), "email")] += 1
        for r in list(self.push.requests):
            token = (r.json().get("message") or {}).get("token", "")
            uid = token.removeprefix("token-")
            if uid.isdigit() and int(uid) in users:
                got[(int(uid), "push")] += 1
        by_phone = {f"+1555{u % 10**7:07d}": u for u in users}
        for r in list(self.sms.requests):
            uid = by_phone.get(r.form().get("To", ""))
            if uid is not None:
                got[(uid, "sms")] += 1
        return got

    def stop(self) -> None:
        for peer in (self.smtp, self.sms, self.push):
            peer.stop()


async def until(check, timeout_s: float = 180.0, every_s: float = 0.2):
    """``eventually``, with room for a worker that is still recovering its tables when the test begins (a
    stack that kept much state restores it for a minute or more); a healthy worker answers in a second.
    A timeout says what the worker was doing (tests/helpers/diagnose.py)."""
    try:
        return await eventually(check, timeout_s, every_s)
    except AssertionError as exc:
        from tests.helpers.diagnose import explain_timeout
        raise AssertionError(f"{exc}\n{await explain_timeout(get_settings())}") from None

"""Shared fixtures for the delivery pipeline's integration tests (real Kafka, PostgreSQL, Redis).

    async def test_x(make_campaign, worker):
        campaign = await make_campaign(users=5000, channels=["email"], variants=[("A", 50), ("B", 50)])
        offsets = await campaign.launch()          # end offsets of message-requests before the launch
        ...

``make_campaign`` writes test users (ids above 10**12, random per campaign so runs
never collide), a static segment holding them, and a draft campaign directly in
PostgreSQL; ``campaign.launch()`` does what the API's launch does (status active,
a new launch_id committed, a ``CampaignLaunch`` on ``campaign-launches``) and
returns the end offsets of ``message-requests`` taken just before, so a test
reads only what its launch produced. Everything it wrote (rows, Redis keys) is
removed when the test ends.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from config import Settings
from schemas.topics import MESSAGE_REQUESTS
from schemas.campaigns import CampaignLaunch, LaunchVariant, campaign_key
from schemas.encoding import encode
from schemas.topics import CAMPAIGN_LAUNCHES
from tests.helpers.kafka import end_offsets

DEFAULT_CONTENT: dict[str, dict[str, Any]] = {
    "email": {"subject": "Hello {{ first_name }}", "html": "<p>Hi {{ first_name }}</p>", "text": "Hi"},
    "sms": {"body": "Hi {{ first_name }}"},
    "push": {"title": "Hello", "body": "Hi {{ first_name }}"},
    "in_app": {"title": "Hello", "body": "Hi {{ first_name }}"},
    "webhook": {"url": "http://127.0.0.1:8094/hook", "payload": {"text": "Hi {{ first_name }}"}},
}


def _user_row(uid: int, language: str) -> tuple:
    return (uid, f"u{uid}@example.test", f"+1555{uid % 10**7:07d}", f"First{uid % 1000}", "Tester", "US", language,
            "UTC", "{}", orjson.dumps([f"token-{uid}"]).decode())


async def insert_users(conn: asyncpg.Connection, user_ids: Sequence[int],
                       language: Callable[[int], str] = lambda uid: "en") -> None:
    """Users with an email, a phone, a push token and ``language(uid)``, written by COPY."""
    await conn.copy_records_to_table(
        "users", records=[_user_row(uid, language(uid)) for uid in user_ids],
        columns=["user_id", "email", "phone", "first_name", "last_name", "country", "language", "timezone",
                 "attributes", "push_tokens"],
    )


async def insert_static_segment(conn: asyncpg.Connection, user_ids: Sequence[int], name: str) -> int:
    segment_id = await conn.fetchval(
        "INSERT INTO segments (name, criteria, dynamic, kind, size, last_computed_at)"
        " VALUES ($1, '{\"conditions\": []}'::jsonb, false, 'static', $2, now()) RETURNING segment_id",
        name, len(user_ids),
    )
    await conn.copy_records_to_table("segment_members", records=[(segment_id, u) for u in user_ids],
                                     columns=["segment_id", "user_id"])
    return segment_id


@dataclass
class PipelineCampaign:
    settings: Settings
    pool: asyncpg.Pool
    campaign_id: int
    segment_id: int
    user_ids: list[int]
    channels: list[str]
    content: dict[str, dict[str, Any]]
    variants: list[tuple[str, float]]
    budget: dict[str, Any] | None
    languages: dict[int, str]
    launches: list[CampaignLaunch] = field(default_factory=list)

    def launch_record(self, launch_id: uuid.UUID | None = None) -> CampaignLaunch:
        return CampaignLaunch(
            launch_id=launch_id or uuid.uuid4(), campaign_id=self.campaign_id, name=f"test {self.campaign_id}",
            type="immediate", segment_id=self.segment_id, channels=self.channels, content=self.content,
            variants=[LaunchVariant(id=v, weight=w) for v, w in self.variants], budget=self.budget,
            audience_size=len(self.user_ids), launched_at=datetime.now(timezone.utc),
        )

    async def commit_launch(self, record: CampaignLaunch) -> None:
        """What the API commits for a launch: status active, the launch id, the time."""
        await self.pool.execute(
            "UPDATE campaigns SET status = 'active', launch_id = $2, launched_at = $3, audience_size = $4,"
            " version = version + 1, updated_at = $3 WHERE campaign_id = $1",
            self.campaign_id, record.launch_id, record.launched_at, len(self.user_ids),
        )

    async def publish(self, record: CampaignLaunch) -> RecordMetadata:
        """Put the launch record on campaign-launches (as the API does); returns where it landed."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_brokers, acks="all")
        await producer.start()
        try:
            return await producer.send_and_wait(CAMPAIGN_LAUNCHES.name, encode(record), key=campaign_key(self.campaign_id))
        finally:
            await producer.stop()

    async def launch(self, record: CampaignLaunch | None = None) -> dict[TopicPartition, int]:
        """Commit and publish a launch (a new one unless given); returns message-requests' end offsets before it."""
        record = record or self.launch_record()
        offsets = await end_offsets(self.settings.kafka_brokers, MESSAGE_REQUESTS.name)
        await self.commit_launch(record)
        await self.publish(record)
        self.launches.append(record)
        return offsets


@pytest.fixture
async def pipeline_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def pipeline_redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make_campaign(settings: Settings, pipeline_pool: asyncpg.Pool, pipeline_redis: aioredis.Redis):
    """A factory of test campaigns over fresh users; removes what it wrote when the test ends."""
    made: list[PipelineCampaign] = []

    async def make(users: int = 1000, channels: Sequence[str] = ("email",),
                   variants: Sequence[tuple[str, float]] = (), content: dict[str, dict[str, Any]] | None = None,
                   budget: dict[str, Any] | None = None,
                   language: Callable[[int], str] = lambda uid: ("en", "fr", "de")[uid % 3]) -> PipelineCampaign:
        base = random.randrange(10**12, 9 * 10**15)
        user_ids = list(range(base, base + users * 3, 3))  # sparse, so ids of every decimal tail occur
        content = content or {ch: DEFAULT_CONTENT[ch] for ch in channels}
        ab = {"enabled": True, "variants": [{"id": v, "weight": w} for v, w in variants]} if variants else {}
        async with pipeline_pool.acquire() as conn, conn.transaction():
            await insert_users(conn, user_ids, language)
            segment_id = await insert_static_segment(conn, user_ids, f"test-pipeline-{base}")
            campaign_id = await conn.fetchval(
                "INSERT INTO campaigns (name, type, status, channels, segment_id, content, ab_test_config, budget,"
                " estimated_recipients) VALUES ($1, 'immediate', 'draft', $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, $7)"
                " RETURNING campaign_id",
                f"test-pipeline-{base}", list(channels), segment_id, orjson.dumps(content).decode(),
                orjson.dumps(ab).decode(), orjson.dumps(budget or {}).decode(), users,
            )
        campaign = PipelineCampaign(settings, pipeline_pool, campaign_id, segment_id, user_ids, list(channels), content,
                                list(variants), budget, {u: language(u) for u in user_ids})
        made.append(campaign)
        return campaign

    yield make

    for c in made:
        async with pipeline_pool.acquire() as conn:
            await conn.execute("DELETE FROM launch_audiences WHERE campaign_id = $1", c.campaign_id)
            await conn.execute("DELETE FROM campaigns WHERE campaign_id = $1", c.campaign_id)
            await conn.execute("DELETE FROM segments WHERE segment_id = $1", c.segment_id)
            await conn.execute("DELETE FROM users WHERE user_id = ANY($1::bigint[])", c.user_ids)
        keys = [k async for k in pipeline_redis.scan_iter(f"campaign:{c.campaign_id}:*", count=10_000)]
        if keys:
            await pipeline_redis.delete(*keys)

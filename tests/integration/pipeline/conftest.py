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
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from config import Settings
from tests.helpers.pipeline import DEFAULT_CONTENT, PipelineCampaign, insert_static_segment, insert_users

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


# ── flows (journeys and triggered campaigns) ──────────────────────────────────


@pytest.fixture(scope="module")
def providers():
    """Recording provider peers (SMTP, Twilio- and FCM-shaped) for a module's flow worker."""
    from tests.helpers.journeys import Providers

    peers = Providers()
    yield peers
    peers.stop()


@pytest.fixture
async def flow_worker(workers, providers, pipeline_redis):
    """The session's worker on ``providers``, with the flows' clock controllable (reset around each test)."""
    from tests.helpers.journeys import reset_clock

    await reset_clock(pipeline_redis)
    yield workers.ensure(providers.env(), "flow-worker")
    await reset_clock(pipeline_redis)


@pytest.fixture
def run() -> str:
    """A token naming this test's events, so other tests' live flows never hear them."""
    return secrets.token_hex(4)

"""Pacing between the gate and the senders, on the real Redis: the senders' report and the gate's wait."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from pipeline.gate_io import LAG_CHECK_S, GateIO
from pipeline.sending import QueueLag


async def test_queue_lag_reports_the_age_of_a_batch_and_expires(pipeline_redis):
    lag = QueueLag(pipeline_redis, "pace-test", every_s=0.0, ttl_ms=300)
    lag.observe(int((time.time() - 2.5) * 1000))
    await asyncio.sleep(0.05)
    assert 2.4 < float(await pipeline_redis.get("lag:pace-test")) < 3.0
    lag.observe(None)  # a record without a timestamp says nothing
    await asyncio.sleep(0.4)
    assert await pipeline_redis.get("lag:pace-test") is None  # idle senders read as "not behind"


async def test_gate_waits_while_a_channel_is_behind_and_only_then(settings, pipeline_redis):
    io = GateIO(settings.model_copy(update={"gate_pace_lag_s": 1.0}))
    await pipeline_redis.delete("lag:pace-a", "lag:pace-b")
    assert await io.pace(["pace-a", "pace-b"]) < 0.05
    await pipeline_redis.set("lag:pace-b", "0.5")  # behind, but within the target
    assert await io.pace(["pace-a", "pace-b"]) < 0.05
    await pipeline_redis.set("lag:pace-b", "7.5", px=600)
    await asyncio.sleep(LAG_CHECK_S)  # the gate reads a channel's lag at most this often
    waited = await io.pace(["pace-a", "pace-b"])
    assert 0.4 < waited < 2.0
    off = GateIO(settings.model_copy(update={"gate_pace_lag_s": 0.0}))
    await pipeline_redis.set("lag:pace-b", "7.5", px=600)
    assert await off.pace(["pace-b"]) == 0.0
    await io.redis.aclose()

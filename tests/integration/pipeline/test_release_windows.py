"""Release windows (pipeline/release_windows.py) on the real Redis: places taken by the gate, given back by senders."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from pipeline import release_windows
from schemas import keys
from pipeline.release_windows import ReleaseWindow, SenderSlots


@pytest.fixture
def channel() -> str:
    return f"flow-test-{uuid.uuid4().hex[:8]}"


async def _settled(slots: SenderSlots) -> None:
    await asyncio.gather(*list(slots._pending))


async def test_a_channel_nobody_reports_for_is_open(pipeline_redis, channel):
    window = ReleaseWindow(pipeline_redis)
    assert all([await window.try_take(channel, f"b{i}") for i in range(50)])
    await pipeline_redis.delete(keys.window_out_key(channel))


async def test_the_window_holds_one_and_a_half_places_per_sender_slot(pipeline_redis, channel):
    window = ReleaseWindow(pipeline_redis)
    a, b = (SenderSlots(pipeline_redis, channel, 2, "a"), SenderSlots(pipeline_redis, channel, 2, "b"))
    a.report()
    await _settled(a)
    try:
        assert [await window.try_take(channel, f"b{i}") for i in range(4)] == [True, True, True, False]
        assert await window.try_take(channel, "b0")  # a replayed release keeps its one place
        b.report()  # a second sender: 4 slots, 6 places
        await _settled(b)
        assert [await window.try_take(channel, f"b{i}") for i in range(3, 7)] == [True, True, True, False]
        a.finished(b"b0")  # the sender finished a batch: its place is free
        await _settled(a)
        assert await window.try_take(channel, "b6")
        assert not await window.try_take(channel, "b7")
        await window.give_back(channel, "b6")  # the gate released nothing after all
        assert await window.try_take(channel, "b7")
    finally:
        await pipeline_redis.delete(keys.window_out_key(channel), keys.window_senders_key(channel))


async def test_small_batches_weigh_their_share_of_a_place(pipeline_redis, channel):
    """A triggered campaign's batch of a few users takes a fraction of a place (a full batch weighs one):
    one sender of 2 slots (3 places) lets 60 batches of 5 through, or 2 full ones and 20 small ones."""
    window = ReleaseWindow(pipeline_redis)
    slots = SenderSlots(pipeline_redis, channel, 2, "s")
    slots.report()
    await _settled(slots)
    try:
        assert all([await window.try_take(channel, f"t{i}", recipients=5) for i in range(60)])
        assert not await window.try_take(channel, "t60", recipients=5)
        assert not await window.try_take(channel, "full", recipients=release_windows.FULL_BATCH)
        for i in range(20):
            slots.finished(f"t{i}")
        await _settled(slots)
        assert await window.try_take(channel, "full", recipients=10_000)  # weighs one place, no more
        assert not await window.try_take(channel, "t60", recipients=5)
        await window.give_back(channel, "full")
        assert await window.try_take(channel, "t60", recipients=5)
        assert await pipeline_redis.hlen(keys.window_weights_key(channel)) == 41
    finally:
        await pipeline_redis.delete(keys.window_out_key(channel), keys.window_senders_key(channel),
                                    keys.window_weights_key(channel))


async def test_a_gone_sender_and_a_lost_place_do_not_close_the_window_for_good(pipeline_redis, channel, monkeypatch):
    monkeypatch.setattr(release_windows, "FRESH_S", 0.5)
    monkeypatch.setattr(release_windows, "LEASE_S", 0.6)
    monkeypatch.setattr(release_windows, "REPORT_EVERY_S", 0.0)
    window = ReleaseWindow(pipeline_redis)
    slots = SenderSlots(pipeline_redis, channel, 1, "only")
    slots.report()
    await _settled(slots)
    try:
        assert [await window.try_take(channel, f"b{i}") for i in range(3)] == [True, True, False]
        slots.report()  # still alive: its places' leases run out, the window opens again
        await _settled(slots)
        await asyncio.sleep(0.7)
        slots.report()
        await _settled(slots)
        assert await window.try_take(channel, "b2")
        assert await window.try_take(channel, "b3")  # b0 and b1 expired: two places again
        assert not await window.try_take(channel, "b4")
        await asyncio.sleep(0.6)  # no report: the sender is gone, nobody reports, the window is open
        assert all([await window.try_take(channel, f"c{i}") for i in range(10)])
        slots.withdraw()
        await _settled(slots)
        assert not await pipeline_redis.hexists(keys.window_senders_key(channel), "only")
    finally:
        await pipeline_redis.delete(keys.window_out_key(channel), keys.window_senders_key(channel))


async def test_take_waits_for_a_place(pipeline_redis, channel):
    window = ReleaseWindow(pipeline_redis)
    slots = SenderSlots(pipeline_redis, channel, 1, "s")
    slots.report()
    await _settled(slots)
    try:
        assert await window.take(channel, "b0") == pytest.approx(0.0, abs=0.05)
        assert await window.try_take(channel, "b1")
        waiting = asyncio.ensure_future(window.take(channel, "b2"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        slots.finished("b0")
        waited = await asyncio.wait_for(waiting, 2.0)
        assert 0.25 < waited < 1.5
    finally:
        await pipeline_redis.delete(keys.window_out_key(channel), keys.window_senders_key(channel))


async def test_a_sender_tells_its_slots_at_most_once_a_second(pipeline_redis, channel):
    slots = SenderSlots(pipeline_redis, channel, 3, "s")
    try:
        slots.report()
        await _settled(slots)
        first = await pipeline_redis.hget(keys.window_senders_key(channel), "s")
        await asyncio.sleep(0.05)
        slots.report()  # the next lag tick: nothing written
        await _settled(slots)
        assert await pipeline_redis.hget(keys.window_senders_key(channel), "s") == first
        assert first.startswith(b"3:")
    finally:
        await pipeline_redis.delete(keys.window_senders_key(channel))

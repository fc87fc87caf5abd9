"""pipeline.lanes: order within a lane, no waiting across lanes, a bound on what is admitted."""

from __future__ import annotations

import asyncio

from pipeline.lanes import Lanes


async def test_work_runs_in_order_within_a_lane_while_another_lane_goes_past():
    lanes, done, gate = Lanes(limit=10), [], asyncio.Event()

    async def step(name: str, wait: asyncio.Event | None = None) -> None:
        if wait is not None:
            await wait.wait()
        done.append(name)

    await lanes.submit("sms", lambda: step("sms-1", gate))
    await lanes.submit("sms", lambda: step("sms-2"))
    await lanes.submit("email", lambda: step("email-1"))
    await asyncio.sleep(0.05)
    assert done == ["email-1"]  # sms-2 waits behind sms-1; email does not
    gate.set()
    await lanes.drain()
    assert done == ["email-1", "sms-1", "sms-2"]


async def test_a_failure_does_not_stop_its_lane():
    lanes, done = Lanes(limit=10), []

    async def boom() -> None:
        raise RuntimeError("boom")

    async def ok() -> None:
        done.append("after")

    first = await lanes.submit("a", boom)
    await lanes.submit("a", ok)
    await lanes.drain()
    assert done == ["after"] and isinstance(first.exception(), RuntimeError)


async def test_submit_waits_for_room_and_cancel_stops_what_waits():
    lanes, gate = Lanes(limit=2), asyncio.Event()
    await lanes.submit("a", gate.wait)
    await lanes.submit("b", gate.wait)
    third = asyncio.create_task(lanes.submit("c", gate.wait))
    await asyncio.sleep(0.05)
    assert not third.done()  # two admitted and not finished: no room
    await lanes.cancel()
    await asyncio.wait_for(third, 1.0)  # room again once the first two stopped
    await lanes.cancel()
    assert not lanes.running

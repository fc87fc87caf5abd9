"""pipeline.lanes: order within a lane, no waiting across lanes, a bound on what is admitted."""

from __future__ import annotations

import asyncio

from pipeline.lanes import InOrderAcks, Lanes


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


class Record:
    def __init__(self, offset: int, log: list[int]) -> None:
        self.offset, self.log = offset, log

    def ack(self) -> None:
        self.log.append(self.offset)


def test_a_record_finished_early_is_acknowledged_only_after_every_earlier_one():
    """Faust would commit past a record still in its lane once the next one is acknowledged."""
    acks, acked = InOrderAcks(), []
    tickets = {o: acks.track("p0", Record(o, acked)) for o in (612, 613, 614)}
    other = acks.track("p1", Record(7, acked))
    assert acks.finish(tickets[613], True) == 0
    assert acks.finish(tickets[614], True) == 0
    assert acks.finish(other, True) == 1  # partitions do not wait for each other
    assert acked == [7]
    assert acks.finish(tickets[612], True) == 3
    assert acked == [7, 612, 613, 614] and acks.waiting("p0") == 0


def test_a_record_whose_partition_went_elsewhere_stops_the_acks_of_what_was_read_with_it():
    acks, acked = InOrderAcks(), []
    first, second = acks.track("p0", Record(1, acked)), acks.track("p0", Record(2, acked))
    acks.finish(second, True)
    acks.finish(first, False)  # not ours any more: the new owner reads both again
    assert acked == [] and acks.waiting("p0") == 0
    again = acks.track("p0", Record(1, acked))  # assigned back: read again from the committed offset
    assert acks.finish(again, True) == 1 and acked == [1]

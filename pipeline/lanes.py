"""Ordered lanes: work runs in order within a lane and concurrently across lanes.

The gate (agents/gate.py) runs each message-requests record in the lane of its
(partition, campaign), so a campaign waiting for its channel's senders does not hold
the other campaigns' records read after it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Lanes:
    """Runs work in order within a lane and concurrently across lanes, at most ``limit`` pieces
    admitted and not finished (``submit`` waits for room, so a stream reads no further ahead)."""

    def __init__(self, limit: int) -> None:
        self.room = asyncio.Semaphore(limit)
        self.tails: dict[object, asyncio.Task] = {}
        self.running: set[asyncio.Task] = set()

    async def submit(self, lane: object, work: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Start ``work`` after the lane's earlier work; the task is created now, in the caller's
        context (its context variables: Faust's current event)."""
        await self.room.acquire()
        task = asyncio.create_task(self._run(lane, self.tails.get(lane), work))
        self.tails[lane] = task
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task

    async def _run(self, lane: object, before: asyncio.Task | None, work: Callable[[], Awaitable[None]]) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])  # its outcome is its own: it logged or dead-lettered
            await work()
        finally:
            self.room.release()
            if self.tails.get(lane) is asyncio.current_task():
                del self.tails[lane]

    async def drain(self) -> None:
        """Wait until everything submitted has finished."""
        while self.running:
            await asyncio.wait(list(self.running))

    async def cancel(self) -> None:
        """Stop everything submitted and not finished, and wait until it has stopped."""
        for task in list(self.running):
            task.cancel()
        if self.running:
            await asyncio.wait(list(self.running))


class _Acked(Protocol):
    def ack(self) -> Any: ...


class InOrderAcks:
    """Acknowledge each partition's records in offset order, whatever order their lanes finish them in.

    Faust commits, per partition, the run of acknowledged offsets that starts at the committed
    one, but its check for a hole at the head is off by one (faust-streaming 0.15.3,
    ``Consumer._new_offset``: ``min(acked) - committed > 1``, with ``committed`` the next offset
    to read): while the record AT the committed offset is still in its lane and the one after
    it is acknowledged, Faust commits past both. A worker killed then loses that record, and
    bench/chaos.py lost a whole batch that way. So a record is handed to Faust's ack only once
    it and every record read before it on its partition are done.

    ``track`` each record in the order the stream reads it, then ``finish`` it: ``done=True``
    (acknowledge when its turn comes) or ``done=False`` (its partition went to another worker:
    nothing of that partition read so far is acknowledged by this worker any more; the new
    owner reads it again from the committed offset).
    """

    def __init__(self) -> None:
        self._queues: dict[object, deque[list]] = {}

    def track(self, partition: object, record: _Acked) -> tuple[object, deque[list], list]:
        """The record's ticket, for ``finish``."""
        queue = self._queues.setdefault(partition, deque())
        entry = [record, None]
        queue.append(entry)
        return partition, queue, entry

    def finish(self, ticket: tuple[object, deque[list], list], done: bool) -> int:
        """Mark a tracked record finished; returns how many records were acknowledged now."""
        partition, queue, entry = ticket
        entry[1] = done
        if not done:
            if self._queues.get(partition) is queue:
                del self._queues[partition]  # later records of the partition start a queue of their own
            queue.clear()
            return 0
        acked = 0
        while queue and queue[0][1] is True:
            queue.popleft()[0].ack()
            acked += 1
        return acked

    def waiting(self, partition: object) -> int:
        """Records of ``partition`` tracked and not yet acknowledged."""
        return len(self._queues.get(partition, ()))

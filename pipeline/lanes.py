"""Ordered lanes: work runs in order within a lane and concurrently across lanes.

The gate (agents/gate.py) runs each message-requests record in the lane of its
(partition, campaign), so a campaign waiting for its channel's senders does not hold
the other campaigns' records read after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


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

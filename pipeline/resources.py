"""Connections a worker process opens once, on first use, and shares between agents."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import asyncpg

from config import Settings
from pipeline.stores import cassandra


class Resources:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._cassandra = None
        self._lock = asyncio.Lock()

    async def postgres(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.settings.postgres_dsn, min_size=1, max_size=8)
        return self._pool

    async def cassandra(self):
        async with self._lock:
            if self._cassandra is None:
                self._cassandra = await asyncio.to_thread(cassandra.connect, self.settings)
        return self._cassandra[1]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._cassandra is not None:
            self._cassandra[0].shutdown()


class _Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


S = TypeVar("S", bound=_Service)


class StartedOnce(Generic[S]):
    """One instance of a service per worker process, built and started on first use.

    An agent's batches may arrive on several tasks at once; the lock makes the
    first of them start the service and the others wait for it. ``stop`` is for
    the agent's shutdown and does nothing if the service never started.
    """

    def __init__(self, build: Callable[[], S]) -> None:
        self._build = build
        self._service: S | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> S:
        async with self._lock:
            if self._service is None:
                candidate = self._build()
                await candidate.start()
                self._service = candidate
        return self._service

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()

"""Connections a worker process opens once, on first use, and shares between agents."""

from __future__ import annotations

import asyncio

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

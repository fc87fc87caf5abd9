"""The clients a worker process opens once, on first use, and hands to every stage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from config import Settings
from pipeline.stores import cassandra


class WorkerClients:
    """The clients of one worker process, each opened once on first use and shared by every stage.

    One PostgreSQL pool, one Redis client, one Cassandra session and one Kafka producer (for
    the stages that produce outside Faust's own producer, with acks from every replica and
    idempotence), as the API's lifespan opens its own (``api/clients.py``). ``close`` is for
    the worker's shutdown.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._redis: Redis | None = None
        self._cassandra = None
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def postgres(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.settings.postgres_dsn, min_size=1,
                                                       max_size=self.settings.worker_postgres_pool)
        return self._pool

    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.redis_url, socket_connect_timeout=2.0, socket_timeout=10.0)
        return self._redis

    async def cassandra(self):
        async with self._lock:
            if self._cassandra is None:
                self._cassandra = await asyncio.to_thread(cassandra.connect, self.settings)
        return self._cassandra[1]

    async def producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                s = self.settings
                producer = AIOKafkaProducer(
                    bootstrap_servers=s.kafka_brokers, client_id=f"{s.app_id}.stages", acks="all",
                    enable_idempotence=True, linger_ms=5, max_batch_size=1_048_576, max_request_size=4_194_304,
                )
                await producer.start()
                self._producer = producer
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._redis is not None:
            await self._redis.aclose()
        if self._pool is not None:
            await self._pool.close()
        if self._cassandra is not None:
            self._cassandra[0].shutdown()
        self._pool, self._redis, self._cassandra, self._producer = None, None, None, None


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

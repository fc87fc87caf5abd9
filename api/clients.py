"""The API's connections to the four servers, opened once per process.

``open_clients`` is entered by the app's lifespan: every request shares one
Postgres pool, one Redis client, one Cassandra session and one Kafka producer
(the launch and preference endpoints publish through it). Cassandra is reached
as the pipeline reaches it (``pipeline.stores.cassandra``: statements name
``keyspace.table``; ``run_async`` awaits a statement). If a server is
unreachable at start-up the API refuses to start rather than serving errors;
once running, each client reconnects by itself and ``/healthz`` shows the gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer
from cassandra.cluster import Session
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from config import Settings
from pipeline.stores import cassandra

# redis-py's default (10 retries, up to 1 s apart) would hold a request for
# seconds while Redis is down; three quick retries still ride out a blip.
_REDIS_RETRY = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.25), retries=3)


@dataclass(frozen=True)
class Clients:
    postgres: asyncpg.Pool
    redis: Redis
    cassandra: Session
    kafka: AIOKafkaProducer


@asynccontextmanager
async def open_clients(settings: Settings) -> AsyncIterator[Clients]:
    """Open all four clients; close whatever was opened, in reverse, on the way out."""
    async with AsyncExitStack() as opened:
        postgres = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=10)
        opened.push_async_callback(postgres.close)

        redis = Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0, retry=_REDIS_RETRY
        )
        opened.push_async_callback(redis.aclose)

        cluster = cassandra.cluster(settings)
        # The driver's connect and shutdown block on its own I/O thread.
        opened.push_async_callback(asyncio.to_thread, cluster.shutdown)
        session = await asyncio.to_thread(cluster.connect)

        kafka = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, client_id="herald-api", acks="all")
        opened.push_async_callback(kafka.stop)  # also cleans up after a failed start
        await kafka.start()

        yield Clients(postgres=postgres, redis=redis, cassandra=session, kafka=kafka)


"""The attribution stage's store calls: users' touches in Redis, campaigns' goals from PostgreSQL.

Redis (``schemas.keys``):
    touch:{user}   hash  campaign id → last touch; c<campaign id> → 1 once converted   (TTL: the longest window)
PostgreSQL: ``campaigns.goals`` (read, cached ``ttl_s``).
The decisions are pipeline/attribution.py's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from redis.asyncio import Redis

from pipeline import attribution as decide
from pipeline.erase_io import ErasedCheck
from pipeline.sinks import until_stored
from pipeline.worker_clients import WorkerClients
from schemas.encoding import from_json
from schemas.keys import touch_key
from schemas.messages import DeliveryEvent


class Touches:
    """``erased``: checked after each write of touches, whose erased users lose them again (pipeline/erase.py)."""

    def __init__(self, redis: Redis, erased: ErasedCheck | None = None) -> None:
        self.redis = redis
        self.erased = erased

    async def record_raw(self, values: list[bytes | None]) -> None:
        """The touches of raw delivery-events values, parsed in a thread (off the worker's event loop)."""
        await self.record(await asyncio.to_thread(lambda: decide.touches_of(decide.sent_events(values))))

    async def record(self, touches: Mapping[int, Mapping[str, str]]) -> None:
        if not touches:
            return

        async def write() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for user, fields in touches.items():
                pipe.hset(touch_key(user), mapping=dict(fields))
                pipe.expire(touch_key(user), decide.TOUCH_TTL_S)
            await pipe.execute()
        await until_stored(write, "attribution.touches")
        gone = await self.erased.among(touches) if self.erased is not None else set()
        if gone:
            await until_stored(lambda: self.redis.delete(*(touch_key(u) for u in gone)), "attribution.erase")

    async def read(self, users: Iterable[int]) -> dict[int, dict]:
        users = list(dict.fromkeys(users))
        if not users:
            return {}

        async def fetch() -> list:
            pipe = self.redis.pipeline(transaction=False)
            for user in users:
                pipe.hgetall(touch_key(user))
            return await pipe.execute()
        return dict(zip(users, await until_stored(fetch, "attribution.read")))

    async def mark_converted(self, conversions: Iterable[DeliveryEvent]) -> None:
        conversions = list(conversions)
        if not conversions:
            return

        async def write() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for c in conversions:
                pipe.hset(touch_key(c.user_id), f"{decide.CONVERTED_PREFIX}{c.campaign_id}", 1)
            await pipe.execute()
        await until_stored(write, "attribution.converted")


class GoalBook:
    """Campaigns' goals, read from PostgreSQL at most every ``ttl_s`` per campaign; and the event names any
    campaign counts as a conversion."""

    def __init__(self, clients: WorkerClients, ttl_s: float = 30.0) -> None:
        self.clients = clients
        self.ttl_s = ttl_s
        self._goals: dict[int, tuple[float, decide.Goals | None]] = {}
        self._names: tuple[float, frozenset[str]] = (0.0, frozenset(decide.DEFAULT_EVENTS))

    async def names(self) -> frozenset[str]:
        at, names = self._names
        if time.monotonic() - at < self.ttl_s:
            return names
        pool = await self.clients.postgres()
        rows = await until_stored(lambda: pool.fetch(
            "SELECT DISTINCT jsonb_array_elements_text(goals -> 'conversion_events') AS name FROM campaigns"
            " WHERE jsonb_typeof(goals -> 'conversion_events') = 'array'"), "attribution.names")
        names = frozenset(decide.DEFAULT_EVENTS) | {r["name"] for r in rows}
        self._names = (time.monotonic(), names)
        return names

    async def goals(self, campaign_ids: Iterable[int]) -> dict[int, decide.Goals]:
        now = time.monotonic()
        wanted = set(campaign_ids)
        stale = [c for c in wanted if c not in self._goals or now - self._goals[c][0] >= self.ttl_s]
        if stale:
            pool = await self.clients.postgres()
            rows = await until_stored(lambda: pool.fetch(
                "SELECT campaign_id, goals FROM campaigns WHERE campaign_id = ANY($1::bigint[])", stale),
                "attribution.goals")
            found = {r["campaign_id"]: decide.goals_of(from_json(r["goals"])) for r in rows}
            for c in stale:
                self._goals[c] = (now, found.get(c))
        return {c: g for c in wanted if (g := self._goals[c][1]) is not None}

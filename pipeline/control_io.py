"""The store calls of a campaign's running state: holding and dropping halted batches, and the control
stage's work (set the status, drain the held list back to Kafka or into "cancelled" events).

Redis keys (``schemas.keys``):
    campaign:{id}:status | :launch   write   the running state (``pipeline.campaign_state``)
    campaign:{id}:held               r/w     raw batches held while paused; holders push to the tail,
                                             the drain reads and trims from the head
    campaign:{id}:held_sources       r/w     where each held batch came from: a replay holds it once

``HeldBatches`` is the one writer of the held list: the gate (``pipeline.gate_io``), release_deferred and
the senders hold through it; the decisions (held or dropped, which events) are ``pipeline.control``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import orjson
import redis.asyncio as aioredis
import structlog

from pipeline import control
from pipeline.campaign_state import STATUS_CACHE_S, load_campaign, set_campaign_status
from pipeline.worker_clients import WorkerClients
from schemas.campaigns import CampaignControl
from schemas.encoding import encode
from schemas.keys import held_key, held_sources_key
from schemas.topics import DELIVERY_EVENTS

log = structlog.get_logger("herald.control")

SLICE = 200  # held batches per read-send-trim round
GRACE_S = 3 * STATUS_CACHE_S  # drain once more after every stage's status cache has expired
SOURCES_TTL_S = 7 * 86400

# KEYS: held list, held sources set   ARGV: source, raw batch
_HOLD = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], %d)
  return 1
end
return 0
""" % SOURCES_TTL_S


class HeldBatches:
    """A campaign's held list, over one Redis client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._hold = redis.register_script(_HOLD)

    async def hold(self, campaign_id: int, source: str, raw: bytes) -> bool:
        """Keep ``raw`` (an encoded MessageBatch) for a resume, once per ``source``; False if it was already."""
        return bool(await self._hold(keys=[held_key(campaign_id), held_sources_key(campaign_id)], args=[source, raw]))

    async def halt(self, campaign_id: int, status: str, source: str, raw: bytes) -> None:
        """What a paused or cancelled campaign does to a batch: held (paused, once per source), or dropped
        (cancelled: nothing is kept). The events to emit are ``pipeline.control.halted_events``."""
        if control.held(status):
            await self.hold(campaign_id, source, raw)

    async def drain(self, campaign_id: int, handle: Callable[[list[bytes]], Awaitable[None]],
                    grace_s: float = GRACE_S) -> int:
        """Hand the held batches to ``handle`` a slice at a time, trimming each slice once handled; then once
        more after ``grace_s`` (a stage that decided to hold just before it saw the new status pushes a
        little later). Returns how many batches were handled."""
        key = held_key(campaign_id)
        moved = 0
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(grace_s)
            while True:
                held = await self.redis.lrange(key, 0, SLICE - 1)
                if not held:
                    break
                await handle(held)
                await self.redis.ltrim(key, len(held), -1)
                moved += len(held)
        if moved:
            log.info("held batches drained", campaign_id=campaign_id, batches=moved)
        return moved


class Controller:
    """Applies control records over the worker's shared clients."""

    def __init__(self, clients: WorkerClients, grace_s: float = GRACE_S) -> None:
        self.clients = clients
        self.grace_s = grace_s
        self._held: HeldBatches | None = None

    @property
    def held(self) -> HeldBatches:
        if self._held is None:
            self._held = HeldBatches(self.clients.redis())
        return self._held

    async def apply(self, record: CampaignControl) -> int:
        """Apply one control record; returns how many held batches it moved or dropped."""
        await set_campaign_status(self.clients.redis(), record.campaign_id, control.status_after(record.action),
                                  record.launch_id)
        if record.action == "resume":
            return await self.held.drain(record.campaign_id, self._resend, self.grace_s)
        dropped = control.DROPPING.get(record.action)
        if dropped is not None:  # cancel or expire: the held batches become events of that status
            runtime = await load_campaign(await self.clients.postgres(), record.campaign_id)
            channels = runtime.channels if runtime is not None else ()
            return await self.held.drain(record.campaign_id, lambda held: self._cancel(held, channels, dropped),
                                         self.grace_s)
        return 0

    async def _resend(self, held: list[bytes]) -> None:
        producer = await self.clients.producer()
        futures = []
        for raw in held:
            batch = orjson.loads(raw)
            topic, partition = control.held_destination(batch)
            futures.append(await producer.send(topic, raw, key=str(batch.get("batch_id", "")).encode(),
                                               partition=partition))
        await asyncio.gather(*futures)

    async def _cancel(self, held: list[bytes], channels: Sequence[str], status: str = "cancelled") -> None:
        producer = await self.clients.producer()
        futures = []
        for raw in held:
            batch = orjson.loads(raw)
            events = control.cancelled_events(batch, channels, status)
            if events.events:
                futures.append(await producer.send(DELIVERY_EVENTS.name, encode(events),
                                                   key=str(batch.get("batch_id", "")).encode(),
                                                   partition=int(batch["partition"])))
        await asyncio.gather(*futures)

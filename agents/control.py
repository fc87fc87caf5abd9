"""control: campaign-control → the campaign's running state, and its held messages.

Input: ``campaign-control`` (JSON ``CampaignControl``, keyed by campaign id, so one
campaign's changes arrive in the order the API made them).
Output: held batches back to their topic and partition (resume); ``delivery-events``
"cancelled" events for held recipients (cancel); ``dead-letters`` for bad records.
Side effects: Redis ``campaign:{id}:status`` (and ``:launch``), ``campaign:{id}:held``.

    pause    → "paused": the gate and senders HOLD the campaign's batches (Redis list
               ``campaign:{id}:held``) instead of sending them; within their ≤ 200 ms cache.
    resume   → "active", then the held batches go back where they were going
               (``outbox.<channel>`` if the batch has a channel, else ``message-requests``),
               to the batch's partition.
    cancel   → "cancelled", held batches dropped, one "cancelled" event per held message.
    complete → "completed".

Draining is at-least-once and safe against concurrent holders: the list is read from
its head a slice at a time, each slice is sent (or its events emitted) and acknowledged,
and only then trimmed; holders push to the tail. A stage that decided to hold just before
it saw the new status pushes a little later, so the list is drained again after the
status caches have expired (``GRACE_S``).

Runs as a bulk consumer task (group ``<app_id>.control``); a replayed record repeats
idempotent work (setting a status, draining an empty list).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from agents._io import send_dead_letters
from pipeline.app import app, clients, settings
from schemas.topics import CAMPAIGN_CONTROL, DELIVERY_EVENTS
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, decode_batch
from pipeline.worker_clients import StartedOnce
from pipeline.campaign_state import (
    STATUS_CACHE_S, cancelled_events, held_destination, held_key, load_campaign, set_campaign_status,
)
from schemas.campaigns import CampaignControl
from schemas.encoding import encode

log = structlog.get_logger("herald.control")

SLICE = 200  # held batches per read-send-trim round
GRACE_S = 3 * STATUS_CACHE_S  # drain once more after every stage's status cache has expired
STATUS_OF = {"pause": "paused", "resume": "active", "cancel": "cancelled", "complete": "completed"}


class Controller:
    def __init__(self) -> None:
        self.resources = clients
        self.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=10.0)
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, client_id=f"{settings.app_id}.control",
                                         acks="all", enable_idempotence=True, linger_ms=2,
                                         max_request_size=4_194_304)
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        await self.redis.aclose()

    async def apply(self, control: CampaignControl) -> int:
        """Apply one control record; returns how many held batches it moved or dropped."""
        status = STATUS_OF[control.action]
        await set_campaign_status(self.redis, control.campaign_id, status, control.launch_id)
        if control.action == "resume":
            return await self._drain(control.campaign_id, self._resend, again=True)
        if control.action == "cancel":
            runtime = await load_campaign(await self.resources.postgres(), control.campaign_id)
            channels = runtime.channels if runtime is not None else ()
            return await self._drain(control.campaign_id, lambda held: self._cancel(held, channels), again=True)
        return 0

    async def _drain(self, campaign_id: int, handle, again: bool) -> int:
        key = held_key(campaign_id)
        moved = 0
        for attempt in range(2 if again else 1):
            if attempt:
                await asyncio.sleep(GRACE_S)
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

    async def _resend(self, held: list[bytes]) -> None:
        assert self.producer is not None
        futures = []
        for raw in held:
            batch = orjson.loads(raw)
            topic, partition = held_destination(batch)
            futures.append(await self.producer.send(topic, raw, key=str(batch.get("batch_id", "")).encode(),
                                                    partition=partition))
        await asyncio.gather(*futures)

    async def _cancel(self, held: list[bytes], channels: Sequence[str]) -> None:
        assert self.producer is not None
        futures = []
        for raw in held:
            batch = orjson.loads(raw)
            events = cancelled_events(batch, channels)
            if events.events:
                futures.append(await self.producer.send(DELIVERY_EVENTS.name, encode(events),
                                                        key=str(batch.get("batch_id", "")).encode(),
                                                        partition=int(batch["partition"])))
        await asyncio.gather(*futures)


_controller = StartedOnce(Controller)


async def control_batch(raws: list[RawRecord]) -> None:
    ctl = await _controller.get()
    decoded = decode_batch(raws, CampaignControl, stage="control")
    for control in decoded.records:
        moved = await ctl.apply(control)
        log.info("campaign control applied", campaign_id=control.campaign_id, action=control.action, held=moved)
    await send_dead_letters(decoded.dead)


@app.task
async def control_campaigns() -> None:
    try:
        await run_forever(settings, CAMPAIGN_CONTROL.name, "control", control_batch)
    finally:  # worker shutdown: close what the controller opened
        await _controller.stop()

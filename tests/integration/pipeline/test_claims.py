"""One sender at a time per outbox record (pipeline.send.ledger.BatchClaims), on the real Redis and
PostgreSQL with a Twilio-shaped peer: what two workers do when a rebalance hands both the same batch."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
from redis.asyncio import Redis

from pipeline.channels import make_channel
from pipeline.codecs import RawRecord
from pipeline.pii_keys import pii_keyring
from pipeline.send.ledger import BatchClaims
from pipeline.send.pacing import TokenBucket
from pipeline.send.sender import CampaignPlans, PostgresProfiles, Sender
from schemas.messages import DeliveryEventBatch, MessageBatch, Recipient
from tests.peers import TwilioPeer, peer_settings


class Worker:
    """A sender as one worker process runs it, with its own Redis client and provider connections."""

    def __init__(self, settings, twilio: TwilioPeer, pool, tag: str) -> None:
        self.settings = peer_settings(settings, sms=twilio)
        self.redis = Redis.from_url(settings.redis_url)
        self.adapter = make_channel("sms", self.settings, self.redis, connections=4)
        self.events: list = []
        self.sender = Sender(self.settings, "sms", self.redis, self.adapter, CampaignPlans(pool, self.settings, "sms"),
                             PostgresProfiles(pool, pii_keyring(settings)), self._events, self._dead,
                             bucket=TokenBucket(self.redis, f"claims-test-{tag}", 1e6))

    async def _events(self, partition: int, batch: DeliveryEventBatch) -> None:
        self.events += batch.events

    async def _dead(self, letters) -> None:
        raise AssertionError(f"dead letters: {letters}")

    def sent(self) -> list[int]:
        return [e.user_id for e in self.events if e.status == "sent"]

    async def close(self) -> None:
        await self.adapter.aclose()
        await self.redis.aclose()


def outbox_batch(cid: int, users: list[int]) -> MessageBatch:
    return MessageBatch(batch_id=f"claims-test:{cid}", campaign_id=cid, channel="sms", partition=0,
                        recipients=[Recipient(user_id=u) for u in users])


def outbox_record(cid: int, users: list[int]) -> RawRecord:
    offset = random.randrange(10**9, 10**12)  # a record of its own offset
    return RawRecord("outbox.sms", 0, offset, None, orjson.dumps(outbox_batch(cid, users).model_dump(mode="json")))


async def at_once(settings, twilio: TwilioPeer, pool, first: RawRecord, second: RawRecord) -> tuple[Worker, Worker]:
    """Two workers handle ``first`` and ``second`` at the same time; returns them when both are done."""
    a, b = Worker(settings, twilio, pool, "a"), Worker(settings, twilio, pool, "b")
    try:
        await asyncio.gather(a.sender.handle([first]), b.sender.handle([second]))
    finally:
        await a.close()
        await b.close()
    return a, b


async def test_two_workers_handed_the_same_batch_send_each_message_once(settings, live, make_campaign,
                                                                        pipeline_pool, pipeline_redis):
    campaign = await make_campaign(users=30, channels=["sms"])
    await pipeline_redis.set(f"campaign:{campaign.campaign_id}:status", "active")
    twilio: TwilioPeer = live["sms"]
    twilio.delay_s = 0.05  # the first worker is still sending when the second one starts
    raw = outbox_record(campaign.campaign_id, campaign.user_ids)
    a, b = await at_once(settings, twilio, pipeline_pool, raw, raw)
    phones = [r.form()["To"] for r in twilio.requests]
    assert len(phones) == len(set(phones)) == len(campaign.user_ids)
    assert sorted(a.sent() + b.sent()) == sorted(campaign.user_ids)  # one "sent" event per message
    assert await pipeline_redis.get(BatchClaims.key(outbox_batch(campaign.campaign_id, []), "sms")) is None  # released


async def test_two_records_of_one_batch_sent_at_once_send_each_message_once(settings, live, make_campaign,
                                                                             pipeline_pool, pipeline_redis):
    """After a SIGKILL the gate can release a batch a second time (a new outbox record, the same
    batch): the two records are not sent at once."""
    campaign = await make_campaign(users=30, channels=["sms"])
    await pipeline_redis.set(f"campaign:{campaign.campaign_id}:status", "active")
    twilio: TwilioPeer = live["sms"]
    twilio.delay_s = 0.05
    first, again = outbox_record(campaign.campaign_id, campaign.user_ids), outbox_record(campaign.campaign_id,
                                                                                         campaign.user_ids)
    assert first.offset != again.offset
    a, b = await at_once(settings, twilio, pipeline_pool, first, again)
    phones = [r.form()["To"] for r in twilio.requests]
    assert len(phones) == len(set(phones)) == len(campaign.user_ids)
    assert sorted(a.sent() + b.sent()) == sorted(campaign.user_ids)


async def test_a_claim_left_by_a_dead_worker_expires_and_the_batch_is_sent(settings, live, make_campaign,
                                                                           pipeline_pool, pipeline_redis):
    campaign = await make_campaign(users=5, channels=["sms"])
    await pipeline_redis.set(f"campaign:{campaign.campaign_id}:status", "active")
    raw = outbox_record(campaign.campaign_id, campaign.user_ids)
    await pipeline_redis.set(BatchClaims.key(outbox_batch(campaign.campaign_id, []), "sms"), "killed-worker",
                             px=1500)  # SIGKILLed while holding it
    worker = Worker(settings, live["sms"], pipeline_pool, "c")
    started = time.monotonic()
    try:
        await worker.sender.handle([raw])
    finally:
        await worker.close()
    assert time.monotonic() - started > 1.0  # it waited for the lease
    assert sorted(worker.sent()) == sorted(campaign.user_ids)


async def test_a_claim_is_held_while_its_batch_outlasts_the_lease(pipeline_redis):
    claims, rival = BatchClaims(pipeline_redis, lease_s=0.6, poll_s=0.05), BatchClaims(pipeline_redis)
    key = f"claim:claims-test:{random.randrange(10**12)}"
    order = []

    async def first() -> None:
        async with claims.hold(key):
            await asyncio.sleep(1.5)  # over twice the lease: renewed, not lost
            order.append("first done")

    async def second() -> None:
        await asyncio.sleep(0.1)
        async with rival.hold(key) as waited:
            order.append("second in")
            assert waited > 1.0

    await asyncio.gather(first(), second())
    assert order == ["first done", "second in"]
    assert await pipeline_redis.get(key) is None

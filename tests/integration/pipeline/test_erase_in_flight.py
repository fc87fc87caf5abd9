"""GDPR erasure racing messages already past the gate (pipeline/erase.py): the sender refuses a recipient
erased since, and what the aggregate and the touches write for a person erased meanwhile is undone.

Each test erases its user the way the API does it in PostgreSQL (the profile deleted, the keyed marker
written) and then puts work for them on the topics after the gate, as if the gate had let it through a
moment before the erasure.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

from pipeline import erase
from pipeline.metrics import log_shard
from pipeline.signing import signing_key
from pipeline.stores.cassandra import connect, run_async
from schemas import keys
from schemas.encoding import encode
from schemas.messages import DeliveryEvent, DeliveryEventBatch, message_id
from schemas.topics import DELIVERY_EVENTS, OUTBOX
from tests.helpers.kafka import eventually, read_campaign_records
from tests.integration.pipeline.test_gate import _batch, _one_partition, _send, _starts


async def _erase_in_postgres(settings, pool, uid: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO erased_users (user_hash) VALUES ($1) ON CONFLICT DO NOTHING",
                           erase.user_marker(erase.marker_key(signing_key(settings)), uid))
        await conn.execute("DELETE FROM segment_members WHERE user_id = $1", uid)
        await conn.execute("DELETE FROM users WHERE user_id = $1", uid)


def _sender_events(records, cid: int) -> dict[int, tuple[str, str | None]]:
    return {e["user_id"]: (e["status"], e["reason"]) for _, r in records if "events" in r for e in r["events"]
            if e["campaign_id"] == cid and e["status"] in ("sent", "suppressed", "failed")}


async def test_the_sender_refuses_a_recipient_erased_after_the_gate(worker, settings, make_campaign, pipeline_pool,
                                                                     pipeline_redis):
    campaign = await make_campaign(users=60, channels=["in_app"])
    cid = campaign.campaign_id
    p, (uid, other) = _one_partition(campaign, settings, 2)
    await _erase_in_postgres(settings, pipeline_pool, uid)
    starts = await _starts(settings, DELIVERY_EVENTS.name)
    batch = _batch(cid, p, [uid, other], f"erase-sender:{cid}:{p}:in_app").model_copy(update={"channel": "in_app"})
    await _send(settings, OUTBOX["in_app"].name, p, b"k", encode(batch))
    records = await read_campaign_records(settings, starts, cid, lambda rs: len(_sender_events(rs, cid)) >= 2)
    assert _sender_events(records, cid) == {uid: ("suppressed", erase.ERASED_REASON), other: ("sent", None)}
    assert await pipeline_redis.exists(keys.inbox_key(other))
    assert not await pipeline_redis.exists(keys.inbox_key(uid))


async def test_rows_written_for_a_person_erased_meanwhile_are_removed_again(worker, settings, make_campaign,
                                                                            pipeline_pool, pipeline_redis):
    campaign = await make_campaign(users=60, channels=["in_app"])
    cid = campaign.campaign_id
    p, (uid, other) = _one_partition(campaign, settings, 2)
    await _erase_in_postgres(settings, pipeline_pool, uid)
    # "sent" events reach the aggregate and the touches after the erasure (sent a moment before it).
    events = [DeliveryEvent(message_id=message_id(cid, u, "in_app", "send"), campaign_id=cid, user_id=u,
                            channel="in_app", status="sent", provider_id=str(uuid.uuid4())) for u in (uid, other)]
    await _send(settings, DELIVERY_EVENTS.name, p, b"k", encode(DeliveryEventBatch(events=events)))
    ks = settings.cassandra_keyspace
    cluster, session = connect(settings)
    try:
        day = datetime.now(timezone.utc).date()
        log_q = (f"SELECT user_id FROM {ks}.message_log WHERE campaign_id = %s AND day = %s AND shard = %s"
                 " AND user_id = %s ALLOW FILTERING")
        index_q = f"SELECT user_id FROM {ks}.message_log_by_user WHERE user_bucket = %s AND user_id = %s"

        async def rows(query: str, params: tuple) -> int:
            return len(list(await run_async(session, query, params)))

        async def settled() -> bool:  # the other's rows and touch are written, and the erased user's are gone
            return (await rows(log_q, (cid, day, log_shard(other), other)) == 1
                    and await pipeline_redis.exists(keys.touch_key(other)) == 1
                    and await rows(log_q, (cid, day, log_shard(uid), uid)) == 0
                    and await rows(index_q, (erase.user_bucket(uid), uid)) == 0
                    and await pipeline_redis.exists(keys.touch_key(uid)) == 0)

        await eventually(settled, timeout_s=90)
        await asyncio.sleep(2)  # past the moment both rows were written: the erased user's stay gone
        assert await settled()
    finally:
        await asyncio.to_thread(cluster.shutdown)

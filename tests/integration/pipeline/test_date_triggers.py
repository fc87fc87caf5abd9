"""Date triggers on the real stack: the scheduler fires a birthday campaign's daily run, which sends to
exactly the segment's members whose birthday it covers (their next 09:00, in their own zone), 29 February
included."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import orjson

from schemas.keys import DEFERRED
from schemas.topics import MESSAGE_REQUESTS
from tests.helpers.kafka import end_offsets, eventually, read_campaign_range
from tests.helpers.schedule import runs, scheduler_once

# A run fired at 00:00 UTC on 28 February 2027 (a common year) covers, at 09:00 local:
# 28 February in Berlin and New York (their 09:00 comes later that day), 1 March in Auckland (13:00 there).
RUN = datetime(2027, 2, 28, 0, 0, tzinfo=timezone.utc)
PROFILES = [  # (zone, birthday, greeted by this run)
    ("Europe/Berlin", "1992-02-29", True),    # a leap-day birthday, on 28 February in a common year
    ("Europe/Berlin", "1990-02-28", True),
    ("Europe/Berlin", "1990-03-01", False),   # tomorrow
    ("Pacific/Auckland", "1990-02-28", False),  # this run covers 1 March there: yesterday's
    ("Pacific/Auckland", "1990-03-01", True),
    ("America/New_York", "1980-02-28", True),
    ("UTC", "1980-02-28", True),              # no zone of their own: the campaign's (Berlin)
    ("Europe/Berlin", None, False),            # no birthday
    ("Europe/Berlin", "2027-02-28", False),    # the date's own day is no anniversary
]


async def test_a_birthday_run_sends_to_the_members_whose_birthday_it_covers(make_campaign, worker, pipeline_pool,
                                                                              pipeline_redis):
    """The scheduler fires the date trigger's daily run (its clock set to the run) and explode freezes the
    members whose birthday it covers."""
    campaign = await make_campaign(users=len(PROFILES), channels=["email"])
    async with pipeline_pool.acquire() as conn:
        for uid, (tz, birthday, _) in zip(campaign.user_ids, PROFILES):
            attributes = {"birthday": birthday} if birthday else {}
            await conn.execute("UPDATE users SET timezone = $2, attributes = $3::jsonb WHERE user_id = $1",
                               uid, tz, orjson.dumps(attributes).decode())
        # As the API leaves a launched date-triggered campaign: scheduled, next run the next 00:00 UTC.
        await conn.execute(
            "UPDATE campaigns SET type = 'triggered', trigger = $2::jsonb, delivery = $3::jsonb,"
            " status = 'scheduled', next_run_at = $4 WHERE campaign_id = $1",
            campaign.campaign_id, orjson.dumps({"date_field": "attributes.birthday"}).decode(),
            orjson.dumps({"local_time": "09:00", "timezone": "Europe/Berlin"}).decode(), RUN)
    try:
        offsets = await end_offsets(campaign.settings.kafka_brokers, MESSAGE_REQUESTS.name)
        committed, published = scheduler_once([campaign.campaign_id], now=RUN + timedelta(seconds=1))
        assert len(committed) == 1 and published == committed
        launch_id = uuid.UUID(committed[0])

        async def done():
            return await pipeline_pool.fetchrow("SELECT state, size FROM launch_audiences WHERE launch_id = $1"
                                                " AND state = 'done'", launch_id)

        row = await eventually(done, timeout_s=60)
        wanted = {uid for uid, (_, _, greeted) in zip(campaign.user_ids, PROFILES) if greeted}
        assert row["size"] == len(wanted)
        batches = await read_campaign_range(campaign.settings, offsets, campaign.campaign_id)
        sent_to = [r["user_id"] for _, batch in batches for r in batch["recipients"]]
        assert sorted(sent_to) == sorted(wanted)
        assert {batch["step"] for _, batch in batches} == {"send@20270228T000000Z"}  # the run's own messages
        next_run = await pipeline_pool.fetchval("SELECT next_run_at FROM campaigns WHERE campaign_id = $1",
                                                campaign.campaign_id)
        assert next_run == RUN + timedelta(days=1)  # and every day after
        assert [(r["occurrence"], r["launch_id"]) for r in await runs(pipeline_pool, campaign.campaign_id)] == [
            (RUN, launch_id)]
    finally:
        # The gate defers each of them to their 09:00 in 2027: take those entries back out.
        async for member, _ in pipeline_redis.zscan_iter(DEFERRED):
            if orjson.loads(member).get("campaign_id") == campaign.campaign_id:
                await pipeline_redis.zrem(DEFERRED, member)

"""Each recipient's local hour on the real stack: launch → explode → gate → gate:deferred → outbox.

Zones a quarter of an hour apart make one campaign-wide ``local_time`` fall at different instants:
with 09:00 in Kolkata (+05:30) a few seconds from now, 09:00 in Kathmandu (+05:45) came 15 minutes
ago and 09:00 in Dhaka (+06:00) 30 minutes ago (none of the three has daylight saving). The launch
record says the campaign was launched 20 minutes ago, as a big launch whose later batches reach the
gate well after it began: Kathmandu's hour came since the launch (sent at once), Dhaka's had passed
at launch (next day, or skipped), Kolkata's is still to come (deferred, sent at it and not before).
When that hour is close to midnight the three local dates are not all the launch's, so the test then
uses Dhaka (+06:00), Yangon (+06:30) and Bangkok (+07:00) with a launch 45 minutes ago instead.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import orjson
from zoneinfo import ZoneInfo

from schemas.keys import DEFERRED
from schemas.topics import DELIVERY_EVENTS, OUTBOX
from tests.helpers.kafka import end_offsets, read_campaign_records

GATE_STATUSES = frozenset({"queued", "suppressed", "deferred"})
# (zones, how long before "soon" the passed user's hour was, how long ago the launch was); "UTC" is what
# ingestion stores for a profile without a zone, so that user is read in the campaign's zone ("soon"'s).
NEAR = ({"now": "Asia/Kathmandu", "soon": "Asia/Kolkata", "passed": "Asia/Dhaka", "later": "America/New_York",
         "no_zone": "UTC"}, timedelta(minutes=30), timedelta(minutes=20))
PAST_MIDNIGHT = ({"now": "Asia/Yangon", "soon": "Asia/Dhaka", "passed": "Asia/Bangkok", "later": "America/New_York",
                  "no_zone": "UTC"}, timedelta(minutes=60), timedelta(minutes=45))


def _events(records, cid: int) -> list[dict]:
    return [e for _, r in records if "events" in r for e in r["events"]
            if e["campaign_id"] == cid and e["status"] in GATE_STATUSES]


def _outbox(records, cid: int) -> list[dict]:
    return [r for _, r in records if r.get("campaign_id") == cid and r.get("channel") == "email" and "recipients" in r]


async def _local_campaign(make_campaign, pipeline_pool, zones: dict[str, str], if_passed: str, local_time: str):
    campaign = await make_campaign(users=len(zones), channels=["email"])
    who = dict(zip(zones, campaign.user_ids))
    async with pipeline_pool.acquire() as conn:
        await conn.executemany("UPDATE users SET timezone = $2 WHERE user_id = $1",
                               [(who[k], zone) for k, zone in zones.items()])
        await conn.execute("UPDATE campaigns SET delivery = $2::jsonb WHERE campaign_id = $1", campaign.campaign_id,
                           orjson.dumps({"local_time": local_time, "if_passed": if_passed,
                                         "timezone": zones["soon"]}).decode())
    return campaign, who


async def _forget_deferred(redis, cid: int) -> None:
    """The deferrals a day away would outlive the test's campaign: take them out of gate:deferred."""
    mine = [m async for m, _ in redis.zscan_iter(DEFERRED) if orjson.loads(m).get("campaign_id") == cid]
    if mine:
        await redis.zrem(DEFERRED, *mine)


async def test_each_recipient_gets_the_message_at_their_own_local_hour(worker, settings, make_campaign,
                                                                       pipeline_pool, pipeline_redis):
    # The worker may still be joining its groups: a campaign without the option first, through to its verdict,
    # so that the clock below starts with the pipeline flowing.
    warm = await make_campaign(users=1, channels=["email"])
    warm_starts = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await warm.launch()
    await read_campaign_records(settings, warm_starts, warm.campaign_id,
                                lambda rs: len(_events(rs, warm.campaign_id)) >= 1, timeout_s=120)

    now = datetime.now(timezone.utc)
    soon = (now + timedelta(seconds=75)).replace(second=0, microsecond=0)  # a minute boundary 15 to 75 s away
    # Kolkata's 23:50 to 00:05 (18:20 to 18:35 UTC) would put the launch and an hour on two local dates.
    zones, passed_before, ago = PAST_MIDNIGHT if (18, 17) <= (soon.hour, soon.minute) < (18, 40) else NEAR
    local_time = soon.astimezone(ZoneInfo(zones["soon"])).strftime("%H:%M")
    launched = now - ago
    next_day, c_next = await _local_campaign(make_campaign, pipeline_pool, zones, "next_day", local_time)
    skip, c_skip = await _local_campaign(make_campaign, pipeline_pool, zones, "skip", local_time)
    starts = {**await end_offsets(settings.kafka_brokers, OUTBOX["email"].name),
              **await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)}
    try:
        for campaign in (next_day, skip):
            await campaign.launch(campaign.launch_record().model_copy(update={"launched_at": launched}))

        # At once: every recipient has a verdict, and "now"'s hour (since the launch, before now) is sent.
        first = {}
        for campaign in (next_day, skip):
            cid = campaign.campaign_id
            records = await read_campaign_records(settings, starts, cid, lambda rs: len(_events(rs, cid)) >= len(zones))
            assert time.time() < soon.timestamp(), "the gate took too long for this test to tell now from later"
            first[cid] = ({e["user_id"]: (e["status"], e["reason"]) for e in _events(records, cid)},
                          _outbox(records, cid))
        outcomes, outbox = first[next_day.campaign_id]
        who = c_next
        assert outcomes == {
            who["now"]: ("queued", None),
            who["soon"]: ("deferred", "local_time"),
            who["no_zone"]: ("deferred", "local_time"),  # the campaign's zone: soon's
            who["passed"]: ("deferred", "local_time"),   # next day
            who["later"]: ("deferred", "local_time"),    # 09:00-ish in New York, hours away
        }
        assert [[r["user_id"] for r in b["recipients"]] for b in outbox] == [[who["now"]]]
        assert outbox[0]["recipients"][0].get("not_before") is None
        outcomes, outbox = first[skip.campaign_id]
        who = c_skip
        assert outcomes[who["passed"]] == ("suppressed", "local_time_passed")
        assert outcomes[who["now"]] == ("queued", None) and outcomes[who["soon"]] == ("deferred", "local_time")
        assert [[r["user_id"] for r in b["recipients"]] for b in outbox] == [[who["now"]]]

        # The passed user of the next_day campaign waits in gate:deferred for tomorrow's hour on their clock.
        scores = {}
        async for member, score in pipeline_redis.zscan_iter(DEFERRED):
            batch = orjson.loads(member)
            if batch.get("campaign_id") == next_day.campaign_id:
                for r in batch["recipients"]:
                    scores[r["user_id"]] = score
        assert scores[c_next["passed"]] == (soon - passed_before + timedelta(days=1)).timestamp()
        # New York's is the same wall-clock time on New York's clock, hours ahead.
        new_york = datetime.fromtimestamp(scores[c_next["later"]], ZoneInfo("America/New_York"))
        assert new_york.strftime("%H:%M:%S") == f"{local_time}:00" and new_york > soon

        # At the hour of "soon" (Kolkata's), and not before: the deferred recipients go to the outbox with not_before.
        for campaign, who in ((next_day, c_next), (skip, c_skip)):
            cid = campaign.campaign_id
            records = await read_campaign_records(
                settings, starts, cid, lambda rs: sum(e["status"] == "queued" for e in _events(rs, cid)) >= 3,
                timeout_s=120)
            released = [e for e in _events(records, cid) if e["status"] == "queued" and e["user_id"] != who["now"]]
            assert sorted(e["user_id"] for e in released) == sorted([who["soon"], who["no_zone"]])
            for e in released:
                at = datetime.fromisoformat(e["at"])
                assert soon <= at < soon + timedelta(seconds=5), (at, soon)
            late = [b for b in _outbox(records, cid) if b["recipients"][0]["user_id"] != who["now"]]
            assert sorted(r["user_id"] for b in late for r in b["recipients"]) == sorted([who["soon"], who["no_zone"]])
            assert {datetime.fromisoformat(r["not_before"]) for b in late for r in b["recipients"]} == {soon}
    finally:
        for campaign in (next_day, skip):
            await _forget_deferred(pipeline_redis, campaign.campaign_id)

"""The scheduler on the real stack: a scheduled campaign starts at its time (not before, within 1 s),
a recurring campaign fires each occurrence once across two schedulers and a scheduler SIGKILLed between
its commit and its publish, each run completes with its own counts, pause skips and cancel ends, and a
campaign still sending at its end time stops there with its unsent messages counted as expired.

Recurring occurrences are fired by ``python -m agents.schedule --once --now <occurrence>`` processes (a
controllable clock): the campaign's ``next_run_at`` is a future 09:00, so the session's worker, whose
scheduler ticks on the real clock, does not fire it itself; it does re-publish a run left ``fired``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import asyncpg
import orjson

from config import Settings
from pipeline import campaigns as campaign_rules
from pipeline import launches, schedule
from schemas.keys import metrics_key, status_key
from schemas.topics import CAMPAIGN_LAUNCHES, MESSAGE_REQUESTS, USER_PROFILES
from tests.helpers.e2e import Api
from tests.helpers.kafka import end_offsets, eventually, produce, read_campaign_range, records_between
from tests.helpers.schedule import make_recurring, runs, scheduler_once, scheduler_process

BERLIN = "Europe/Berlin"
CRON = "0 9 * * *"


def _a_future_0900(days: int = 3) -> datetime:
    """09:00 in Berlin a few days ahead, as an instant: an occurrence of CRON the worker's clock has not reached."""
    day = (datetime.now(ZoneInfo(BERLIN)) + timedelta(days=days)).date()
    return datetime(day.year, day.month, day.day, 9, tzinfo=ZoneInfo(BERLIN)).astimezone(timezone.utc)


async def _launch_records(settings: Settings, before, campaign_ids: set[int]) -> list[dict]:
    after = await end_offsets(settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)
    return [v for _, v in await records_between(settings.kafka_brokers, CAMPAIGN_LAUNCHES.name, before, after)
            if isinstance(v, dict) and v.get("campaign_id") in campaign_ids]


async def _run_completed(pool: asyncpg.Pool, campaign_id: int, occurrence: datetime, timeout_s: float = 90.0) -> dict:
    async def done():
        row = await pool.fetchrow("SELECT * FROM campaign_runs WHERE campaign_id = $1 AND occurrence = $2",
                                  campaign_id, occurrence)
        return dict(row) if row is not None and row["state"] == "completed" else None
    return await eventually(done, timeout_s=timeout_s)


async def _schedule_at(pool: asyncpg.Pool, campaign_id: int, start: datetime) -> asyncpg.Record:
    """What the API's launch does to a scheduled campaign that starts later (``launches.schedule``)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE campaigns SET type = 'scheduled', start_time = $2 WHERE campaign_id = $1",
                           campaign_id, start)
        row = await conn.fetchrow("SELECT * FROM campaigns WHERE campaign_id = $1", campaign_id)
        return await launches.schedule(conn, row, None, datetime.now(timezone.utc))


async def test_a_scheduled_campaign_sends_at_its_start_not_before_and_within_a_second(
        settings, worker, make_campaign, pipeline_pool, pipeline_redis):
    probe = await make_campaign(users=1)  # the session's worker may still be starting: wait for its scheduler
    await _schedule_at(pipeline_pool, probe.campaign_id, datetime.now(timezone.utc) + timedelta(seconds=0.5))
    await eventually(lambda: _published_runs(pipeline_pool, probe.campaign_id), timeout_s=120)

    campaign = await make_campaign(users=20)
    start = datetime.now(timezone.utc) + timedelta(seconds=4)
    before = await end_offsets(settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)
    scheduled = await _schedule_at(pipeline_pool, campaign.campaign_id, start)
    assert scheduled["status"] == "scheduled" and scheduled["next_run_at"] == start

    await asyncio.sleep(max(0.0, (start - datetime.now(timezone.utc)).total_seconds() - 0.5))
    assert await pipeline_redis.hget(metrics_key(campaign.campaign_id), "sent") is None
    assert await runs(pipeline_pool, campaign.campaign_id) == []  # not before its time

    (run,) = await eventually(lambda: _published_runs(pipeline_pool, campaign.campaign_id), timeout_s=10)
    assert run["occurrence"] == start and start <= run["fired_at"]
    assert (run["published_at"] - start).total_seconds() <= 1.0, run  # launch acknowledged within 1 s
    (record,) = await _launch_records(settings, before, {campaign.campaign_id})
    assert record["launch_id"] == str(run["launch_id"]) and record["occurrence"] is None

    await eventually(lambda: _status(pipeline_pool, campaign.campaign_id, "completed"), timeout_s=90)
    done = await _run_completed(pipeline_pool, campaign.campaign_id, start)
    assert orjson.loads(done["counts"])["sent"] == 20 and done["audience_size"] == 20


async def _published_runs(pool: asyncpg.Pool, campaign_id: int) -> list[dict]:
    return [r for r in await runs(pool, campaign_id) if r["state"] in ("published", "completed")]


async def _status(pool: asyncpg.Pool, campaign_id: int, status: str) -> bool:
    return await pool.fetchval("SELECT status FROM campaigns WHERE campaign_id = $1", campaign_id) == status


async def test_each_occurrence_fires_once_across_two_schedulers_and_each_run_completes_with_its_counts(
        settings, worker, make_campaign, pipeline_pool):
    campaigns = [await make_campaign(users=5) for _ in range(6)]
    ids = {c.campaign_id for c in campaigns}
    at = _a_future_0900()
    for c in campaigns:
        await make_recurring(pipeline_pool, c.campaign_id, CRON, BERLIN, at)
    before = await end_offsets(settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)

    procs = [scheduler_process(sorted(ids), at + timedelta(milliseconds=100)) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode()[-1000:] for _, e in outputs]
    committed = [orjson.loads(out.splitlines()[0])["committed"] for out, _ in outputs]
    assert not set(committed[0]) & set(committed[1])  # never the same occurrence twice
    fired = set(committed[0]) | set(committed[1])
    assert fired == {str(schedule.run_launch_id(cid, at)) for cid in ids}

    records = await _launch_records(settings, before, ids)
    assert sorted(r["launch_id"] for r in records) == sorted(fired)  # one launch record per occurrence
    assert {r["occurrence"] for r in records} == {at.isoformat().replace("+00:00", "Z")}
    for c in campaigns:
        (run,) = await runs(pipeline_pool, c.campaign_id)
        assert run["occurrence"] == at and run["state"] in ("published", "completed")
    assert scheduler_once(sorted(ids), at + timedelta(seconds=1)) == ([], [])  # no longer due: nothing again

    for c in campaigns:
        done = await _run_completed(pipeline_pool, c.campaign_id, at)
        assert orjson.loads(done["counts"])["sent"] == 5
        row = await pipeline_pool.fetchrow("SELECT status, next_run_at FROM campaigns WHERE campaign_id = $1",
                                           c.campaign_id)
        assert row["status"] == "scheduled"  # a run completed; the campaign waits for its next occurrence
        assert row["next_run_at"] == schedule.next_occurrence(CRON, BERLIN, at)


async def test_a_scheduler_killed_between_commit_and_publish_leaves_the_occurrence_fired_once(
        settings, worker, make_campaign, pipeline_pool, pipeline_redis):
    campaign = await make_campaign(users=8)
    at = _a_future_0900(days=4)
    await make_recurring(pipeline_pool, campaign.campaign_id, CRON, BERLIN, at)
    before = await end_offsets(settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)

    proc = scheduler_process([campaign.campaign_id], at + timedelta(milliseconds=50), pause_before_publish_s=60)
    line = proc.stdout.readline()
    assert orjson.loads(line)["committed"] == [str(schedule.run_launch_id(campaign.campaign_id, at))]
    os.killpg(proc.pid, signal.SIGKILL)  # committed, not yet published
    proc.wait()
    (run,) = await runs(pipeline_pool, campaign.campaign_id)
    assert run["state"] == "fired"
    killed_at = time.monotonic()

    # The worker's scheduler publishes runs left fired for more than schedule_republish_after_s.
    (run,) = await eventually(lambda: _published_runs(pipeline_pool, campaign.campaign_id), timeout_s=120)
    assert time.monotonic() - killed_at >= settings.schedule_republish_after_s - 1.0
    done = await _run_completed(pipeline_pool, campaign.campaign_id, at)
    assert orjson.loads(done["counts"])["sent"] == 8
    assert scheduler_once([campaign.campaign_id], at + timedelta(seconds=2)) == ([], [])
    records = await _launch_records(settings, before, {campaign.campaign_id})
    assert [r["launch_id"] for r in records] == [str(run["launch_id"])]
    assert int(await pipeline_redis.hget(metrics_key(campaign.campaign_id), "sent")) == 8  # each user once


async def test_after_downtime_the_latest_missed_occurrence_fires_once_and_the_rest_are_skipped(
        worker, make_campaign, pipeline_pool):
    campaign = await make_campaign(users=3)
    first = _a_future_0900(days=5)
    await make_recurring(pipeline_pool, campaign.campaign_id, CRON, BERLIN, first)
    committed, _ = scheduler_once([campaign.campaign_id], first + timedelta(days=2, hours=1))  # down for 3
    latest = schedule.next_occurrence(CRON, BERLIN, first + timedelta(days=1))
    assert committed == [str(schedule.run_launch_id(campaign.campaign_id, latest))]
    got = [(r["occurrence"], r["state"], r["reason"]) for r in await runs(pipeline_pool, campaign.campaign_id)]
    assert got[:2] == [(first, "skipped", "missed"),
                       (schedule.next_occurrence(CRON, BERLIN, first), "skipped", "missed")]
    assert got[2][:2] == (latest, "published") or got[2][:2] == (latest, "completed")


async def test_pause_skips_the_occurrences_that_fall_while_paused_and_cancel_ends_the_campaign(
        settings, worker, make_campaign, pipeline_pool):
    campaign = await make_campaign(users=3)
    cid = campaign.campaign_id
    at = _a_future_0900(days=6)
    await make_recurring(pipeline_pool, cid, CRON, BERLIN, at)
    following = schedule.next_occurrence(CRON, BERLIN, at)

    def scenario() -> None:  # the Api helper runs its own event loop: in a thread of its own
        with Api(settings) as api:
            assert api.call("PATCH", f"/api/v1/campaigns/{cid}", json={"status": "paused"})["status"] == "paused"
            assert scheduler_once([cid], at + timedelta(seconds=1)) == ([], [])
            (skipped,) = api.call("GET", f"/api/v1/campaigns/{cid}/runs")["runs"]
            assert (datetime.fromisoformat(skipped["occurrence"]), skipped["state"], skipped["reason"]) == (
                at, "skipped", "paused")
            assert datetime.fromisoformat(api.get(cid)["next_run_at"]) == following

            resumed = api.call("PATCH", f"/api/v1/campaigns/{cid}", json={"status": "active"})
            assert resumed["status"] == "scheduled"  # between runs: back to waiting for the next occurrence

            cancelled = api.call("PATCH", f"/api/v1/campaigns/{cid}", json={"status": "cancelled"})
            assert cancelled["status"] == "cancelled" and cancelled["next_run_at"] is None
            assert scheduler_once([cid], following + timedelta(seconds=1)) == ([], [])

    await asyncio.to_thread(scenario)
    assert len(await runs(pipeline_pool, cid)) == 1


async def test_runs_are_listed_newest_first_a_page_at_a_time(settings, worker, make_campaign, pipeline_pool):
    campaign = await make_campaign(users=2)
    cid = campaign.campaign_id
    first = _a_future_0900(days=8)
    await make_recurring(pipeline_pool, cid, CRON, BERLIN, first)
    scheduler_once([cid], first + timedelta(days=2, minutes=1))  # two skipped, one fired
    await asyncio.to_thread(_list_runs_a_page_at_a_time, settings, cid, first)


def _list_runs_a_page_at_a_time(settings: Settings, cid: int, first: datetime) -> None:
    with Api(settings) as api:
        page = api.call("GET", f"/api/v1/campaigns/{cid}/runs?limit=2")
        assert [r["state"] for r in page["runs"]][1] == "skipped" and page["next_cursor"]
        assert page["runs"][0]["launch_id"] == str(schedule.run_launch_id(cid, first + timedelta(days=2)))
        rest = api.call("GET", f"/api/v1/campaigns/{cid}/runs?limit=2&cursor={page['next_cursor']}")
        assert [r["state"] for r in rest["runs"]] == ["skipped"] and rest["next_cursor"] is None
        assert set(page["runs"][0]["counts"]) >= {"sent", "suppressed", "failed", "expired"}
        error = api.client.get(f"/api/v1/campaigns/{cid}/runs?cursor=nonsense",
                               headers={"Authorization": f"Bearer {api.key}"})
        assert error.status_code == 422 and error.json()["error"]["fields"][0]["field"] == "cursor"
        assert api.client.get("/api/v1/campaigns/999999999999/runs",
                              headers={"Authorization": f"Bearer {api.key}"}).status_code == 404
        document = api.call("GET", "/api/v1/openapi.json")
        assert "/api/v1/campaigns/{campaign_id}/runs" in document["paths"]
        assert "next_run_at" in document["components"]["schemas"]["Campaign"]["properties"]


async def test_a_campaign_still_sending_at_its_end_time_stops_and_counts_the_rest_as_expired(
        settings, worker, make_campaign, pipeline_pool, pipeline_redis):
    campaign = await make_campaign(users=40)
    cid = campaign.campaign_id
    record = campaign.launch_record()
    await campaign.commit_launch(record)
    def pause() -> None:  # before explode sees the launch: every batch is held
        with Api(settings) as api:
            assert api.call("PATCH", f"/api/v1/campaigns/{cid}", json={"status": "paused"})["status"] == "paused"

    await asyncio.to_thread(pause)
    await eventually(lambda: _redis_is(pipeline_redis, cid, b"paused"), timeout_s=30)
    await campaign.publish(record)
    await asyncio.sleep(3)  # explode emits, the gate holds
    assert await pipeline_redis.hget(metrics_key(cid), "sent") is None

    await pipeline_pool.execute("UPDATE campaigns SET end_time = now() WHERE campaign_id = $1", cid)
    await eventually(lambda: _status(pipeline_pool, cid, "completed"), timeout_s=60)
    counters = await pipeline_redis.hgetall(metrics_key(cid))
    assert int(counters[b"expired"]) == 40 and b"sent" not in counters
    assert int(counters[b"accounted"]) == 40
    assert await pipeline_redis.get(status_key(cid)) == b"expired"


async def _redis_is(redis, cid: int, status: bytes) -> bool:
    return await redis.get(status_key(cid)) == status


def test_bad_schedules_and_times_are_422_naming_the_field(settings, worker):
    now = datetime.now(timezone.utc)
    base = {"name": "bad schedule", "channels": ["email"], "target_segment_id": 1,
            "content": {"email": {"subject": "Hi", "text": "Hi"}}}
    cases = [
        ({"type": "recurring", "schedule": {"cron": "0 25 * * *", "timezone": "UTC"}}, "schedule.cron"),
        ({"type": "recurring", "schedule": {"cron": "0 9 * * MON", "timezone": "Mars/Olympus"}}, "schedule.timezone"),
        ({"type": "scheduled", "start_time": (now + timedelta(days=2)).isoformat(),
          "end_time": (now + timedelta(days=1)).isoformat()}, "end_time"),
        ({"type": "scheduled", "start_time": (now - timedelta(minutes=5)).isoformat()}, "start_time"),
    ]
    with Api(settings) as api:
        for extra, field in cases:
            response = api.client.post("/api/v1/campaigns", json={**base, **extra},
                                       headers={"Authorization": f"Bearer {api.key}"})
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert field in [f["field"] for f in error["fields"]], (field, error)


async def test_changing_a_scheduled_campaigns_cron_moves_its_next_run(settings, worker, make_campaign, pipeline_pool):
    campaign = await make_campaign(users=1)
    cid = campaign.campaign_id
    await make_recurring(pipeline_pool, cid, CRON, BERLIN, _a_future_0900(days=9))
    new = {"cron": "30 7 * * *", "timezone": "America/New_York"}

    def patch() -> dict:
        with Api(settings) as api:
            return api.call("PATCH", f"/api/v1/campaigns/{cid}", json={"schedule": new})

    changed = await asyncio.to_thread(patch)
    expected = schedule.next_occurrence(new["cron"], new["timezone"], datetime.now(timezone.utc))
    assert datetime.fromisoformat(changed["next_run_at"]) == expected
    assert await pipeline_pool.fetchval("SELECT next_run_at FROM campaigns WHERE campaign_id = $1", cid) == expected


async def test_daylight_saving_days_fire_a_skipped_wall_time_once_and_a_repeated_one_once(
        worker, make_campaign, pipeline_pool):
    """Berlin 2027: 02:30 does not exist on 28 March (it runs at 03:30 CEST) and happens twice on 31 October
    (it runs at the first, CEST)."""
    cron = "30 2 * * *"
    spring, fall = await make_campaign(users=1), await make_campaign(users=1)
    spring_run = campaign_rules.next_run({"cron": cron, "timezone": BERLIN},
                                         datetime(2027, 3, 27, 12, tzinfo=timezone.utc))
    assert spring_run == datetime(2027, 3, 28, 1, 30, tzinfo=timezone.utc)  # 03:30 CEST
    fall_run = schedule.next_occurrence(cron, BERLIN, datetime(2027, 10, 30, 12, tzinfo=timezone.utc))
    assert fall_run == datetime(2027, 10, 31, 0, 30, tzinfo=timezone.utc)  # the first 02:30 (CEST)
    await make_recurring(pipeline_pool, spring.campaign_id, cron, BERLIN, spring_run)
    await make_recurring(pipeline_pool, fall.campaign_id, cron, BERLIN, fall_run)

    assert scheduler_once([spring.campaign_id], spring_run - timedelta(seconds=1)) == ([], [])  # not before
    assert len(scheduler_once([spring.campaign_id], spring_run)[0]) == 1
    assert len(scheduler_once([fall.campaign_id], fall_run)[0]) == 1
    second_0230 = datetime(2027, 10, 31, 1, 30, tzinfo=timezone.utc)  # 02:30 CET, the repeated one
    assert scheduler_once([fall.campaign_id], second_0230 + timedelta(seconds=1)) == ([], [])
    for campaign, following in ((spring, datetime(2027, 3, 29, 0, 30, tzinfo=timezone.utc)),
                                (fall, datetime(2027, 11, 1, 1, 30, tzinfo=timezone.utc))):
        assert [r["state"] for r in await runs(pipeline_pool, campaign.campaign_id)] in (["published"], ["completed"])
        assert await pipeline_pool.fetchval("SELECT next_run_at FROM campaigns WHERE campaign_id = $1",
                                            campaign.campaign_id) == following


async def test_a_run_with_nobody_to_send_to_completes_and_the_campaign_waits_for_the_next(
        worker, make_campaign, pipeline_pool):
    campaign = await make_campaign(users=0)  # a segment empty at this occurrence: no event will ever come
    at = _a_future_0900(days=10)
    await make_recurring(pipeline_pool, campaign.campaign_id, CRON, BERLIN, at)
    assert len(scheduler_once([campaign.campaign_id], at)[0]) == 1
    done = await _run_completed(pipeline_pool, campaign.campaign_id, at, timeout_s=120)
    assert done["audience_size"] == 0
    assert await _status(pipeline_pool, campaign.campaign_id, "scheduled")


async def test_each_run_of_a_dynamic_segment_goes_to_its_members_at_that_occurrence(
        settings, worker, make_campaign, pipeline_pool):
    """Run 1 goes to who matches then; between the runs two members stop matching and three new users
    start: run 2 goes to the segment as it is at its own occurrence."""
    token = uuid.uuid4().hex
    base = random.randrange(10**12, 9 * 10**15)
    first, newcomers = [base + i for i in range(5)], [base + 100 + i for i in range(3)]

    def profiles(user_ids: list[int], probe: str) -> list[tuple[bytes, bytes]]:
        return [(str(u).encode(), orjson.dumps({"user_id": u, "email": f"r{u}@example.test",
                                                "attributes": {"segment_probe": probe},
                                                "updated_at": datetime.now(timezone.utc).isoformat()}))
                for u in user_ids]

    campaign = await make_campaign(users=0, channels=["email"])
    criteria = {"conditions": [{"field": "segment_probe", "operator": "equals", "value": token}], "logic": "AND"}
    await pipeline_pool.execute("UPDATE segments SET kind = 'dynamic', dynamic = true, criteria = $2::jsonb"
                                " WHERE segment_id = $1", campaign.segment_id, orjson.dumps(criteria).decode())
    at = _a_future_0900()
    await make_recurring(pipeline_pool, campaign.campaign_id, CRON, BERLIN, at)
    try:
        await produce(settings.kafka_brokers, USER_PROFILES.name, profiles(first, token))
        audiences = {}
        for occurrence in (at, schedule.next_occurrence(CRON, BERLIN, at)):
            if occurrence != at:  # between the runs: two members leave the segment, three users join it
                await produce(settings.kafka_brokers, USER_PROFILES.name,
                              profiles(first[:2], "left") + profiles(newcomers, token))
            start = await end_offsets(settings.kafka_brokers, MESSAGE_REQUESTS.name)
            (launch_id,), _ = scheduler_once([campaign.campaign_id], occurrence + timedelta(milliseconds=100))
            done = await _run_completed(pipeline_pool, campaign.campaign_id, occurrence)
            assert str(done["launch_id"]) == launch_id
            batches = await read_campaign_range(settings, start, campaign.campaign_id)
            audiences[occurrence] = sorted(r["user_id"] for _, b in batches for r in b["recipients"])
        assert list(audiences.values()) == [first, sorted(first[2:] + newcomers)]
    finally:
        await pipeline_pool.execute("DELETE FROM users WHERE user_id = ANY($1::bigint[])", first + newcomers)

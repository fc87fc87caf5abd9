"""schedule: due scheduled and recurring campaigns → campaign-launches, each occurrence exactly once.

Input: PostgreSQL ``campaigns.next_run_at`` (no topic: a loop every ``schedule_tick_s``, 0.2 s).
Output: ``campaign-launches`` (a ``CampaignLaunch`` per fired run, keyed by campaign id; a recurring
run carries its ``occurrence``, so its messages have ids, dedup keys and a ledger of their own);
``campaign-control`` (``expire``, when a sending campaign reaches its end_time).
Side effects: PostgreSQL ``campaign_runs`` (one row per occurrence: fired, published, skipped),
``campaigns`` (status active, the run's launch_id, the next ``next_run_at``), audit rows by Herald.

Why each occurrence fires exactly once, with any number of workers and a worker killed at any
moment (pipeline/schedule_io.py has the order of effects):
- due campaigns are claimed with ``FOR UPDATE SKIP LOCKED`` in a transaction that inserts the run
  row (UNIQUE (campaign_id, occurrence)) and advances ``next_run_at``: a second scheduler either
  skips the locked rows or, after the commit, finds them no longer due;
- the run row is committed (``fired``) BEFORE the launch record is published; a worker killed in
  between leaves it ``fired``, and any worker's tick publishes it again after a few seconds;
- the launch id is uuid5(campaign, occurrence), so a record published twice is one launch: explode
  finds it done and ignores it.
Nothing lives only in memory: a restarted worker reads everything back from PostgreSQL. Missed
occurrences after downtime: the latest fires once, the earlier ones are recorded as skipped
(pipeline/schedule.py). ``python -m agents.schedule --once [--now ISO] [--pause-before-publish S]``
runs one tick in this process (tests run two at once and kill one mid-firing).
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from pipeline import schedule_io
from pipeline.app import app, clients, settings

log = structlog.get_logger("herald.schedule")
scheduler = schedule_io.Scheduler(settings, clients)


@app.task
async def fire_due_campaigns() -> None:
    while True:
        try:
            await scheduler.tick()
        except asyncio.CancelledError:
            raise
        except Exception:  # a store that is down: the next tick tries again, nothing was half-done
            log.exception("scheduler tick failed")
        await asyncio.sleep(settings.schedule_tick_s)


if __name__ == "__main__":
    asyncio.run(schedule_io.main(sys.argv[1:], settings))

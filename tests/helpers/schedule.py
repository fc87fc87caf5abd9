"""Scheduler test helpers: campaigns made scheduled or recurring in PostgreSQL, one scheduler tick in a
process of its own (``python -m agents.schedule --once``), and the runs a campaign has."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from config.settings import REPO_ROOT


async def make_recurring(pool: asyncpg.Pool, campaign_id: int, cron: str, tz: str, next_run_at: datetime,
                         status: str = "scheduled", end_time: datetime | None = None) -> None:
    """A test campaign as the API leaves a launched recurring one: scheduled, with its next occurrence."""
    await pool.execute(
        "UPDATE campaigns SET type = 'recurring', status = $2, schedule = $3::jsonb, next_run_at = $4, end_time = $5"
        " WHERE campaign_id = $1",
        campaign_id, status, orjson.dumps({"cron": cron, "timezone": tz}).decode(), next_run_at, end_time)


async def runs(pool: asyncpg.Pool, campaign_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM campaign_runs WHERE campaign_id = $1 ORDER BY occurrence", campaign_id)
    return [dict(r) for r in rows]


def scheduler_process(campaign_ids: list[int], now: datetime | None = None, pause_before_publish_s: float = 0.0
                      ) -> subprocess.Popen:
    """One scheduler tick over ``campaign_ids`` only (the clock set ahead must not fire other people's
    campaigns on the shared stack), in a process of its own (stdout: a JSON line once committed, one once
    published)."""
    args = [sys.executable, "-m", "agents.schedule", "--once"]
    for cid in campaign_ids:
        args += ["--campaign", str(cid)]
    if now is not None:
        args += ["--now", now.isoformat()]
    if pause_before_publish_s:
        args += ["--pause-before-publish", str(pause_before_publish_s)]
    return subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def scheduler_once(campaign_ids: list[int], now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Run one tick to its end: (launch ids committed, launch ids published)."""
    proc = scheduler_process(campaign_ids, now)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    committed = next(line["committed"] for line in lines if "committed" in line)
    published = next(line["published"] for line in lines if "published" in line)
    return committed, published

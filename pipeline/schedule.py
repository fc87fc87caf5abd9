"""When scheduled and recurring campaigns run: cron occurrences in a time zone, what one scheduler tick
does with a due campaign, end times, and the runs' states. Pure (standard library and croniter).

    campaigns.next_run_at ≤ now ──► claim (FOR UPDATE SKIP LOCKED, pipeline/schedule_io.py)
                                        │  plan_due(): fire the latest due occurrence, record the
                                        │  earlier ones as skipped, next_run_at = the next one
                                        ▼
    run:  fired ──launch acknowledged──► published ──every message accounted──► completed
          skipped (missed during downtime · fell while paused · the previous run still sending)
          cancelled (the campaign was cancelled while the run was sending)

Daylight saving, as cron users expect: the cron is iterated in naive local wall time and each wall
time is mapped to UTC with ``fold=0``. A wall time the clocks skip (02:30 on a spring-forward night)
maps to the first instant after the gap (03:30 local), so that day's run happens once; a wall time
the clocks repeat (02:30 on a fall-back night) maps to its first instance, so that day's run never
happens twice; two wall times that map to the same instant (an hourly cron's 02:00 and 03:00 on a
spring-forward night) are one occurrence.

Missed occurrences (the scheduler was down, or slower than the cron): only the LATEST due
occurrence fires, once; the earlier ones are recorded as ``skipped`` runs (reason "missed"), at
most ``MAX_SKIPS_RECORDED`` of them per tick. A recurring campaign that is paused, or whose previous
run is still sending, fires nothing: its due occurrences are recorded as skipped. No run starts at
or after ``end_time``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

RUN_NAMESPACE = uuid.UUID("6f3d2a1c-8e4b-4c7d-9a2f-13b5e7c9d0a4")
RUN_STATES = ("fired", "published", "completed", "skipped", "cancelled")
OPEN_RUN_STATES = frozenset({"fired", "published"})  # a run that is sending (or about to)
SCHEDULED_TYPES = frozenset({"scheduled", "recurring"})
MAX_SKIPS_RECORDED = 100  # skipped runs written per campaign and tick (the latest ones)
MAX_WALK = 100_000  # occurrences walked to catch up a long downtime before giving up on counting

MISSED = "missed"
PAUSED = "paused"
STILL_SENDING = "previous run still sending"
ENDED = "after end_time"


def utc(value: datetime) -> datetime:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def wall_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """A naive local wall time as an instant: the first instance of a repeated time (fold=0), and a
    time inside a gap shifted forward by the gap (zoneinfo applies the offset from before the gap)."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(timezone.utc)


def occurrences(cron: str, tz_name: str | None, after: datetime) -> Iterator[datetime]:
    """The cron's occurrences strictly after ``after``, in UTC, strictly increasing, read in ``tz_name``."""
    tz = ZoneInfo(tz_name or "UTC")
    after = utc(after)
    # Start an hour of wall time early: after a fall-back the local reading of ``after`` may be the
    # second instance of a repeated hour, and the filter below drops what is not after it.
    start = after.astimezone(tz).replace(tzinfo=None, microsecond=0) - timedelta(hours=1, seconds=1)
    walk = croniter(cron, start)
    last = after
    while True:
        at = wall_to_utc(walk.get_next(datetime), tz)
        if at > last:
            last = at
            yield at


def next_occurrence(cron: str, tz_name: str | None, after: datetime) -> datetime:
    return next(occurrences(cron, tz_name, after))


def run_launch_id(campaign_id: int, occurrence: datetime) -> uuid.UUID:
    """The launch id of one run: the same for every worker and every re-fire of it, so explode does it once."""
    return uuid.uuid5(RUN_NAMESPACE, f"{campaign_id}:{utc(occurrence):%Y%m%dT%H%M%S.%fZ}")


def next_after(kind: str, schedule: Mapping | None, end_time: datetime | None, after: datetime
               ) -> datetime | None:
    """The next occurrence of a campaign strictly after ``after`` that starts before its end, or None."""
    if kind != "recurring" or not schedule:
        return None
    at = next_occurrence(schedule["cron"], schedule.get("timezone"), after)
    return None if end_time is not None and at >= utc(end_time) else at


@dataclass(frozen=True)
class Tick:
    """What one claim does to one due campaign."""

    fire: datetime | None = None  # the occurrence to fire now
    skipped: tuple[tuple[datetime, str], ...] = ()  # occurrences recorded as skipped, with why
    next_run_at: datetime | None = None  # when to look again (None: nothing more is scheduled)
    complete: bool = False  # nothing fires and nothing more will: the campaign completes
    missed_unrecorded: int = 0  # skipped occurrences beyond MAX_SKIPS_RECORDED


def plan_due(kind: str, status: str, next_run_at: datetime, schedule: Mapping | None,
             end_time: datetime | None, now: datetime) -> Tick:
    """Which occurrences of a due campaign (``next_run_at <= now``) fire or are skipped, and what is next.

    ``kind`` is the campaign type, ``status`` its status: ``scheduled`` fires, ``paused`` (recurring)
    and ``active`` (recurring: the previous run still sending) only skip.
    """
    now, first, end = utc(now), utc(next_run_at), None if end_time is None else utc(end_time)
    if kind != "recurring":  # a one-shot scheduled campaign: its start time
        if end is not None and first >= end:
            return Tick(skipped=((first, ENDED),), complete=status == "scheduled")
        if status != "scheduled":  # paused before it started: it starts when resumed
            return Tick(next_run_at=first)
        return Tick(fire=first)
    due: list[datetime] = []
    walked = 0
    at: datetime | None = None if end is not None and first >= end else first
    while at is not None and at <= now:
        due.append(at)
        walked += 1
        if len(due) > MAX_SKIPS_RECORDED + 1:
            due.pop(0)
        if walked >= MAX_WALK:  # a minutely cron down for months: stop counting, look from now
            at = next_after(kind, schedule, end_time, now)
            break
        at = next_after(kind, schedule, end_time, at)
    following = at  # the first occurrence after now, before the end (or None)
    missed_unrecorded = max(0, walked - len(due))
    if not due:  # the first due time was already past the end
        return Tick(next_run_at=None, complete=status in ("scheduled", "paused"))
    if status == "scheduled":
        fire, skipped = due[-1], tuple((d, MISSED) for d in due[:-1])
    else:
        reason = PAUSED if status == "paused" else STILL_SENDING
        fire, skipped = None, tuple((d, reason) for d in due)
    return Tick(fire=fire, skipped=skipped, next_run_at=following,
                complete=fire is None and following is None and status in ("scheduled", "paused"),
                missed_unrecorded=missed_unrecorded)


# ---------------------------------------------------------------- runs and their end


def after_run(next_run_at: datetime | None) -> str:
    """Where a recurring campaign goes when a run completes: back to scheduled if it runs again."""
    return "scheduled" if next_run_at is not None else "completed"


def expiring(status: str, end_time: datetime | None, expired_at: datetime | None, now: datetime) -> bool:
    """Whether a sending campaign has reached its end time and must stop (unsent messages expire). The
    expiry query of ``pipeline.schedule_io`` applies this rule in SQL; keep the two in step."""
    return (status in ("active", "paused") and end_time is not None and expired_at is None
            and utc(end_time) <= utc(now))


def run_counts(totals: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """A run's counts: the campaign's counters now minus what they were when the run began."""
    out: dict[str, float] = {}
    for name, value in totals.items():
        delta = value - base.get(name, 0)
        if delta:
            out[name] = round(delta, 6) if isinstance(delta, float) and not delta.is_integer() else int(delta)
    return out


def republish_due(fired_at: datetime, now: datetime, after_s: float) -> bool:
    """A run left ``fired`` this long was committed by a worker that died before Kafka acknowledged it (the
    re-publish query of ``pipeline.schedule_io`` applies this rule in SQL; keep the two in step)."""
    return utc(now) - utc(fired_at) >= timedelta(seconds=after_s)

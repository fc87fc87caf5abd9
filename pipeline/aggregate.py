"""The aggregate stage's decisions: what a batch folds, which campaigns are done, what gets logged. Pure.

The counting rule itself is ``pipeline.metrics`` (``collapse``, ``outcome``); this module turns
its deltas into the fold script's arguments (``pipeline/aggregate_io.py`` runs the script), reads
the completion check's answers, picks the events that get a ``message_log`` row, and cuts them
into Cassandra batches of one partition each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import ValidationError

from pipeline import metrics
from pipeline.analytics import split_field
from schemas.keys import (
    dashboard_day_key, dashboard_minute_key, dashboard_top_key, hour_metrics_key, minute_metrics_key, seen_key,
)
from schemas.messages import DeliveryEvent, DeliveryEventBatch

ROWS_PER_LOG_BATCH = 100  # ~20 KB: above Cassandra's 5 KiB warning, well under its 50 KiB limit (raised in stack.py)
ENDED = frozenset({"completed", "cancelled"})
# PostgreSQL statuses after a run is over: Redis' running status becomes completed (a recurring
# campaign waiting for its next occurrence is ``scheduled``).
RUN_OVER = frozenset({"completed", "scheduled"})


def fold_args(deltas: Sequence[metrics.MessageDelta], ttl: int = metrics.SEEN_TTL_S) -> list:
    """The fold script's ARGV for a batch of per-message deltas (the layout is documented with the script)."""
    groups: dict[metrics.Group, int] = {}
    for d in deltas:
        groups.setdefault(d.group, len(groups) + 1)
    args: list = [ttl, len(groups)]
    for g in groups:
        args += [*g.keys, metrics.reason_field(g.reason), g.campaign_id]
    slots: dict[tuple[int, str, int], int] = {}
    for d in deltas:
        slots.setdefault((d.group.campaign_id, d.group.series_prefix, d.minute), len(slots) + 1)
    args.append(len(slots))
    for campaign_id, prefix, minute in slots:
        args += [minute_metrics_key(campaign_id, minute), hour_metrics_key(campaign_id, minute // 60), prefix,
                 dashboard_minute_key(minute), dashboard_day_key(minute // 1440), dashboard_top_key(minute // 1440),
                 prefix.split(":", 1)[0] + ":", campaign_id, f"{campaign_id}:{minute // 60}"]
    args.append(len(deltas))
    for d in deltas:
        args += [seen_key(d.group.campaign_id, metrics.seen_shard(d.message_id)), d.message_id.bytes, d.mask,
                 groups[d.group], repr(d.cost), repr(d.revenue),
                 slots[(d.group.campaign_id, d.group.series_prefix, d.minute)]]
    return args


def completion(expected: int | None, accounted: int, status: str | None) -> str | None:
    """What the completion check does with a campaign: "ended" (forget it: completed or cancelled already),
    "complete" (every message accounted while running: complete it), or None (not yet: ask again later)."""
    if status in ENDED:
        return "ended"
    if metrics.is_complete(expected, accounted, status):
        return "complete"
    return None


def forgotten_after_completing(final_status: str | None) -> bool:
    """Whether a campaign leaves the open set once completing it answered ``final_status`` (PostgreSQL's
    status afterwards; None: PostgreSQL has no such campaign, a deleted draft's or a bench's)."""
    return final_status in ENDED or final_status in RUN_OVER or final_status is None


def completed_audit(campaign_id: int, version: int, completed_at: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after) of the audit row of a campaign Herald completed."""
    return ({"campaign_id": campaign_id, "status": "active"},
            {"campaign_id": campaign_id, "status": "completed", "version": version,
             "completed_at": completed_at.isoformat()})


def batch_events(batches: Iterable[DeliveryEventBatch]) -> list[DeliveryEvent]:
    return [e for batch in batches for e in batch.events]


def logged_events(values: Iterable[bytes | None]) -> list[DeliveryEvent]:
    """The events of raw ``delivery-events`` values that get a message_log row, validated; the rest
    (queued, held, deferred: half of all events) are skipped after a plain JSON parse. A value that is
    not a DeliveryEventBatch is skipped: the aggregate's own consumer dead-letters it."""
    out: list[DeliveryEvent] = []
    for value in values:
        try:
            events = orjson.loads(value or b"")["events"]
            out += [DeliveryEvent.model_validate(e) for e in events if metrics.logged(e.get("status"))]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValidationError):
            continue
    return out


def partition_chunks(rows: Iterable[tuple], key_columns: int, size: int = ROWS_PER_LOG_BATCH) -> list[list[tuple]]:
    """Rows cut into unlogged batches: each of one partition (the rows' first ``key_columns`` values), at most
    ``size`` rows."""
    partitions: dict[tuple, list[tuple]] = defaultdict(list)
    for row in rows:
        partitions[row[:key_columns]].append(row)
    return [part[i:i + size] for part in partitions.values() for i in range(0, len(part), size)]


def log_batches(events: Iterable[DeliveryEvent], size: int = ROWS_PER_LOG_BATCH) -> list[list[tuple]]:
    """``message_log`` rows cut into unlogged batches: each of one (campaign, day, shard) partition."""
    return partition_chunks((metrics.log_row(e) for e in events), 3, size)


# ---------------------------------------------------------------- campaign_metrics (Cassandra), per hour

MONEY_MICROS = frozenset({"revenue", "budget_spent"})  # stored as millionths (the column is a bigint)


def parse_hour_member(member: bytes | str) -> tuple[int, int] | None:
    """(campaign id, hour since the epoch) of a DIRTY_HOURS member, or None if malformed."""
    text = member.decode() if isinstance(member, bytes) else member
    campaign, _, hour = text.partition(":")
    return (int(campaign), int(hour)) if campaign.isdigit() and hour.isdigit() else None


def hour_rows(campaign_id: int, hour: int, raw: dict) -> list[tuple]:
    """campaign_metrics rows (campaign_id, date, hour, channel, variant, metric, value) of one hour's counts:
    absolute values, so that writing them again (a retry, a later copy of the same hour) is harmless."""
    at = datetime.fromtimestamp(hour * 3600, timezone.utc)
    rows = []
    for key, value in raw.items():
        parts = split_field(key.decode() if isinstance(key, bytes) else key)
        if parts is None:
            continue
        channel, variant, metric = parts
        number = float(value)
        if metric in MONEY_MICROS:
            metric, number = f"{metric}_micros", number * 1_000_000
        rows.append((campaign_id, at.date(), at.hour, channel, variant, metric, int(round(number))))
    return rows

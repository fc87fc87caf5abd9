"""Folding delivery events into live campaign counters, counted once per message and status.

Delivery is at-least-once everywhere upstream: the aggregate's own consumer
replays its uncommitted tail after a crash, and a stage that crashed may emit
the same events again under new offsets. Remembering offsets would only cover
the first case, so the fold remembers, per message, which statuses it has
already counted: a bit mask per ``message_id``.

    seen:    campaign:{id}:seen:{bucket}   hash  message_id (16 bytes) -> mask
    totals:  campaign:{id}:metrics         hash  status -> count, suppressed:<reason>, budget_spent, ...
    split:   campaign:{id}:metrics:{channel} and campaign:{id}:metrics:{channel}:{variant}

A (message, status) pair is counted the first time it is seen and never again.
The masks live in 65,536 small hashes per campaign (the first two bytes of the
message id), so each stays in Redis' compact listpack encoding (~25 bytes per
message) and expires with a TTL. The Lua script in ``pipeline/aggregate_io.py``
applies ``outcome`` below, atomically, for a whole batch; this module is the
same rule in Python, which the unit tests pin and the integration test
compares the script against.

Completion: every message ends as exactly one *outcome* — sent, failed,
bounced, suppressed, cancelled or expired (the campaign's end_time came first) (delivered follows sent; deferred, held and
queued are on the way). ``accounted`` counts messages with at least one outcome;
a campaign is complete when ``accounted`` reaches ``campaign:{id}:expected``.
Suppressed and cancelled only count when they are a message's first outcome,
so a replay that re-judges a message already sent (as frequency-capped, say)
does not inflate the suppression counts. A suppression with reason
"duplicate" is the gate saying "this message was already handled": it has a
bit of its own and counts (as ``suppressed`` and ``suppressed:duplicate``) once
per message even after the message was sent; it is the gate's job not to call
a replay of the very same request a duplicate.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Iterable

from schemas.keys import (
    NO_VARIANT, channel_metrics_key, hour_metrics_key, metrics_key, minute_metrics_key, variant_metrics_key,
)
from schemas.messages import DeliveryEvent

# Bit i of a message's mask is STATUSES[i]. Append only: masks are stored.
# "duplicate" is a suppression with reason "duplicate", kept apart (see ``outcome``).
STATUSES: tuple[str, ...] = (
    "queued", "sent", "delivered", "bounced", "failed", "suppressed", "deferred", "held", "cancelled",
    "opened", "clicked", "converted", "duplicate", "expired", "complained", "machine_opened",
    "unsubscribed",
)
BIT = {status: 1 << i for i, status in enumerate(STATUSES)}
OUTCOMES = frozenset({"sent", "failed", "bounced", "suppressed", "cancelled", "duplicate", "expired"})
OUTCOME_MASK = sum(BIT[s] for s in OUTCOMES)
# Counted only as the first outcome of a message (see the module docstring).
FIRST_OUTCOME_ONLY = frozenset({"suppressed", "cancelled", "expired"})
FIRST_ONLY_MASK = sum(BIT[s] for s in FIRST_OUTCOME_ONLY)
DUPLICATE = "duplicate"
MACHINE_OPENED = "machine_opened"  # an "opened" event flagged ``machine``: counted apart from people's opens

ACCOUNTED = "accounted"  # field of the totals hash: messages with an outcome
SEEN_TTL_S = 14 * 24 * 3600
# The time series: per minute (kept 3 days) and per hour (kept 400 days: the analytics API's longest range).
MINUTE_TTL_S = 3 * 24 * 3600
HOUR_TTL_S = 400 * 24 * 3600
# Every campaign's counts per minute and campaigns by sent per day (the realtime dashboard): kept 2 days.
# Written by the same script; not in ``fold``'s reference model (they mix every campaign's counts).
DASHBOARD_TTL_S = 2 * 24 * 3600
SHARDS = 64  # message_log partitions per campaign and day


# ---------------------------------------------------------------- keys (built by schemas.keys)


def seen_shard(message_id: uuid.UUID) -> str:
    """The ``seen`` bucket a message's mask lives in: the first two bytes of its id (65,536 per campaign)."""
    return message_id.bytes[:2].hex()


def reason_field(reason: str | None) -> str:
    return f"suppressed:{reason or 'unknown'}"


# ---------------------------------------------------------------- one batch, per message


@dataclass(frozen=True, slots=True)
class Group:
    """The counters one message's statuses go to: its campaign, channel, variant, suppression reason."""

    campaign_id: int
    channel: str
    variant: str | None
    reason: str | None  # the suppression reason, when the batch suppresses this message

    @property
    def series_prefix(self) -> str:
        """The field prefix of this group in the minute and hour hashes."""
        return f"{self.channel}:{self.variant or NO_VARIANT}:"

    @property
    def keys(self) -> tuple[str, str, str]:
        return (metrics_key(self.campaign_id), channel_metrics_key(self.campaign_id, self.channel),
                variant_metrics_key(self.campaign_id, self.channel, self.variant))


@dataclass(slots=True)
class MessageDelta:
    """Everything one batch says about one message: the statuses (a mask) and what they carry."""

    message_id: uuid.UUID
    group: Group
    mask: int = 0
    cost: float = 0.0  # of the send (counted with the "sent" bit)
    revenue: float = 0.0  # of a conversion (counted with the "converted" bit)
    minute: int = 0  # when (minutes since the epoch): of the latest of its events in the batch


def collapse(events: Iterable[DeliveryEvent]) -> list[MessageDelta]:
    """One delta per message, in first-seen order: the union of its statuses in this batch.

    Unknown statuses are ignored rather than crashing the fold (the schema may
    grow before this module does).
    """
    deltas: dict[uuid.UUID, MessageDelta] = {}
    for e in events:
        status = DUPLICATE if e.status == "suppressed" and e.reason == DUPLICATE else e.status
        if status == "opened" and e.machine:
            status = MACHINE_OPENED
        bit = BIT.get(status)
        if bit is None:
            continue
        d = deltas.get(e.message_id)
        if d is None:
            reason = e.reason if status == "suppressed" else None
            d = deltas[e.message_id] = MessageDelta(e.message_id, Group(e.campaign_id, e.channel, e.variant, reason))
        elif status == "suppressed" and d.group.reason is None:
            g = d.group
            d.group = Group(g.campaign_id, g.channel, g.variant, e.reason)
        d.mask |= bit
        d.minute = max(d.minute, int(e.at.timestamp() // 60))
        if status == "sent":
            d.cost = max(d.cost, e.cost)
        if status == "converted":
            d.revenue = max(d.revenue, _revenue(e))
    return list(deltas.values())


def _revenue(e: DeliveryEvent) -> float:
    return float(e.revenue or 0.0)


@dataclass(frozen=True, slots=True)
class Outcome:
    mask: int  # the message's mask after this batch
    counted: tuple[str, ...]  # statuses counted now, each once ever
    accounted: bool  # the message got its first outcome now


def outcome(old: int, new: int) -> Outcome:
    """What folding the statuses ``new`` into a message already at ``old`` counts.

    The Lua script in pipeline/aggregate_io.py implements exactly this.
    """
    fresh = new & ~old
    first_outcome = old & OUTCOME_MASK == 0 and fresh & OUTCOME_MASK != 0
    counted = []
    # A message with another outcome (before, or in this same batch) is not also suppressed or cancelled.
    other = (old | new) & OUTCOME_MASK & ~FIRST_ONLY_MASK
    first_only_taken = old & OUTCOME_MASK != 0 or other != 0
    for status in STATUSES:
        if not fresh & BIT[status]:
            continue
        if status in FIRST_OUTCOME_ONLY:
            if first_only_taken:
                continue
            first_only_taken = True  # suppressed wins over cancelled in the same batch
        counted.append(status)
    return Outcome(old | new, tuple(counted), first_outcome)


Increments = dict[str, dict[str, float]]


def fold(deltas: Iterable[MessageDelta], seen: dict[uuid.UUID, int]) -> Increments:
    """The counter increments of a batch, given the masks already seen (updated in place).

    The reference model of the Lua fold: ``{hash key: {field: increment}}``.
    """
    out: Increments = defaultdict(lambda: defaultdict(float))
    for d in deltas:
        o = outcome(seen.get(d.message_id, 0), d.mask)
        seen[d.message_id] = o.mask
        if not o.counted and not o.accounted:
            continue
        prefix = d.group.series_prefix
        cid = d.group.campaign_id
        for key in (minute_metrics_key(cid, d.minute), hour_metrics_key(cid, d.minute // 60)):
            series = out[key]
            for status in o.counted:
                series[prefix + ("suppressed" if status == DUPLICATE else status)] += 1
                if status == "converted" and d.revenue:
                    series[prefix + "revenue"] += d.revenue
                elif status == "sent" and d.cost:
                    series[prefix + "budget_spent"] += d.cost
        for key in d.group.keys:
            counters = out[key]
            for status in o.counted:
                if status == DUPLICATE:
                    counters["suppressed"] += 1
                    counters[reason_field(DUPLICATE)] += 1
                    continue
                counters[status] += 1
                if status == "suppressed":
                    counters[reason_field(d.group.reason)] += 1
                elif status == "sent" and d.cost:
                    counters["budget_spent"] += d.cost
                elif status == "converted" and d.revenue:
                    counters["revenue"] += d.revenue
            if o.accounted:
                counters[ACCOUNTED] += 1
    return {k: dict(v) for k, v in out.items()}


# ---------------------------------------------------------------- completion


def is_complete(expected: int | None, accounted: int, status: str | None) -> bool:
    """Every expected message has an outcome, and the campaign is still running (not paused or ended), or
    stopped at its end time (its unsent messages expired: it completes too)."""
    return expected is not None and accounted >= expected and status in (None, "active", "expired")


# ---------------------------------------------------------------- message_log rows


# Statuses on the way to an outcome: counted live, not written to message_log (the log keeps
# what became of each message: sent, delivered, bounced, failed, suppressed, opened, ...).
TRANSIT = frozenset({"queued", "deferred", "held"})


def logged(status: object) -> bool:
    """Whether an event of ``status`` gets a message_log row."""
    return status not in TRANSIT


def log_day(event: DeliveryEvent) -> date:
    return event.at.date()


def log_shard(user_id: int) -> int:
    return user_id % SHARDS


def log_time(event: DeliveryEvent) -> datetime:
    """The row's clustering time: the event time in Cassandra's milliseconds, plus the status' bit index
    in milliseconds.

    The primary key is (…, sent_at, message_id): without the nudge, "queued" and "sent" of one message
    within the same millisecond would be one row, the later write winning. With it, each status of a
    message has its own row, a replayed event rewrites its own row, and times move by at most 11 ms.
    """
    at = event.at.replace(microsecond=event.at.microsecond // 1000 * 1000)
    return at + timedelta(milliseconds=STATUSES.index(event.status) if event.status in BIT else 0)


def log_row(event: DeliveryEvent) -> tuple:
    """A ``message_log`` row: (campaign_id, day, shard, sent_at, message_id, user_id, channel, variant,
    status, delivered_at, error_message, metadata)."""
    metadata = {"step": event.step}
    if event.provider_id:
        metadata["provider_id"] = event.provider_id
    if event.cost:
        metadata["cost"] = repr(event.cost)
    if event.status == "suppressed" and event.reason:
        metadata["reason"] = event.reason
    return (
        event.campaign_id, log_day(event), log_shard(event.user_id), log_time(event), event.message_id, event.user_id,
        event.channel, event.variant, event.status, event.at if event.status == "delivered" else None,
        event.reason if event.status in ("failed", "bounced", "suppressed", "cancelled", "expired") else None,
        metadata,
    )


def log_partition(event: DeliveryEvent) -> tuple[int, date, int]:
    return (event.campaign_id, log_day(event), log_shard(event.user_id))

"""What a campaign's running state does to its work: the control stage's decisions, and the one rule
every stage follows for a paused or cancelled campaign. Pure.

    control record   running status   a batch that meets it (gate, release_deferred, senders)
    pause          → paused           held: kept in ``campaign:{id}:held``, one "held" event per message
    resume         → active           the held batches go back where they were going
    cancel         → cancelled        dropped: one "cancelled" event (reason "cancelled") per message
    complete       → completed
    expire         → expired          dropped: one "expired" event (reason "end_time") per message (the
                                      scheduler's, at the campaign's end_time; the campaign then completes)

The I/O half (holding a batch once per source, draining the held list) is ``pipeline/control_io.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from pipeline.gate import delivery_event
from schemas.messages import DeliveryEventBatch
from schemas.topics import outbox_or_requests

STATUS_OF = {"pause": "paused", "resume": "active", "cancel": "cancelled", "complete": "completed",
             "expire": "expired"}
HALTING = frozenset({"paused", "cancelled", "expired"})
# The event each message of a halted batch gets: (status, reason).
HALT_EVENT = {"paused": ("held", None), "cancelled": ("cancelled", "cancelled"), "expired": ("expired", "end_time")}
# The actions that drop the held batches (with their status' events) rather than send them on.
DROPPING = {"cancel": "cancelled", "expire": "expired"}


def status_after(action: str) -> str:
    """The running status a control action sets."""
    return STATUS_OF[action]


def halts(status: str | None) -> bool:
    """Whether a campaign in ``status`` stops its batches (held or dropped) instead of sending them."""
    return status in HALTING


def held(status: str) -> bool:
    """Whether a halted batch is kept for a resume (paused) rather than dropped (cancelled)."""
    return status == "paused"


def held_source(topic: str, partition: int, offset: int, part: str | None = None) -> str:
    """Where a held batch came from, so a replay of the same record holds it once (``part``: which
    piece of the record, when a stage holds less than all of it)."""
    return f"{topic}:{partition}:{offset}" + (f":{part}" if part else "")


def halted_events(campaign_id: int, step: str, recipients: Iterable[tuple[int, str | None]],
                  channels: Sequence[str], status: str, at: str | None = None) -> list[dict]:
    """The events of a batch halted by ``status`` ("paused" or "cancelled"): one per recipient
    ``(user_id, variant)`` and channel, as ``DeliveryEvent`` JSON."""
    event_status, reason = HALT_EVENT[status]
    at = at or datetime.now(timezone.utc).isoformat()
    return [delivery_event(campaign_id, user_id, channel, step, variant, event_status, reason, at)
            for channel in channels for user_id, variant in recipients]


def batch_recipients(batch: Mapping[str, Any]) -> list[tuple[int, str | None]]:
    """``(user_id, variant)`` of each recipient of a ``MessageBatch`` (as JSON)."""
    return [(r["user_id"], r.get("variant")) for r in batch["recipients"]]


def batch_channels(batch: Mapping[str, Any], channels: Sequence[str]) -> list[str]:
    """The channels a batch is for: its own, or (a message-requests batch) every one of the campaign's."""
    return [batch["channel"]] if batch.get("channel") else list(channels)


# ---------------------------------------------------------------- held batches (the control stage)


def held_destination(batch: Mapping[str, Any]) -> tuple[str, int]:
    """Where a held batch goes back to on resume: its channel's outbox, else message-requests; its own partition."""
    return outbox_or_requests(batch.get("channel")).name, int(batch["partition"])


def cancelled_events(batch: Mapping[str, Any], channels: Sequence[str], status: str = "cancelled"
                     ) -> DeliveryEventBatch:
    """One "cancelled" (or ``status``: "expired") event per message of a held batch: each recipient on the
    batch's channel, or on every one."""
    events = halted_events(int(batch["campaign_id"]), batch.get("step") or "send", batch_recipients(batch),
                           batch_channels(batch, channels), status)
    return DeliveryEventBatch.model_validate({"events": events})

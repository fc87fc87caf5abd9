"""Erasure and export (GDPR Art. 15, 17, 20): the decisions, without I/O.

How one person is erased (``DELETE /api/v1/users/{id}``, api/erasure.py):

    API ──► PostgreSQL   erasures row (id, user, per-store state), erased_users marker (keyed hash of the id),
     │                   users, user_preferences, segment_members, launch_audiences (a finished launch
     │                   keeps no audience), unsubscribes (address → keyed hash, row detached from the user),
     │                   audit rows about them kept (the trail of the erasure itself is the legal record)
     ├──► Cassandra      user_events partitions of every month in the lookback; message_log rows deleted
     ├──► Redis          touch:{user}, inbox:{user}, flow:*:exit:{user}
     ├──► Kafka          tombstones on user-profiles and preference-updates (compacted: the key goes)
     └──► user-erasures  keyed by user ──► [erase_state] on the worker owning the user's partition:
                           gate_preferences / gate_suppressions / gate_history buckets without the user
                           (a tombstone when a bucket empties), journey_state tombstone; then marks the
                           erasure row's "faust_tables" done

The row's ``stores`` maps each store (``STORES``) to "pending" | "done" | "failed: <why>"; ``done_at`` is set
once every store is done (``all_done``), which ``GET /api/v1/erasures/{id}`` reports.

message_log rows are deleted, not redacted: a row exists to say what Herald sent to whom; without the
whom it says nothing the hourly ``campaign_metrics`` (which hold no person) does not already say. The
rows are found without an index: for each campaign that ran in the lookback, the user's shard
(user_id % 64) of each of its days is read with a filter on user_id inside that one partition.

No resurrection: ``erased_users`` holds HMAC-SHA256(key, user id) and the time. ingest_profiles drops a
later profile of that user (counted, not dead-lettered) unless it is a new sign-up: a profile whose
``created_at`` is after the erasure (``is_new_signup``); that profile deletes the marker and the person
exists again. ingest_events drops the events of a marked user. The gate refuses a marked user's
messages with reason ``erased``. The marker is a keyed hash so that the table is not itself a list
of people (the id can be recomputed only with the key).

In flight (pipeline/send/sender.py, aggregate_io.py, attribution_io.py, match_triggers): a message the
gate let through just before the erasure is refused by its sender (reason ``erased``: no profile, and the
marker); what the aggregate (message_log), the touches and the in-app inbox write for a person erased
meanwhile is undone by the writer, which reads the marker AFTER its write (an erasure it does not see
committed its marker later, so the erasure's own deletions find the write). An event of an erased user
starts no journey. The audience stores drop the user on the user-profiles tombstone (pipeline/segments/
live.py) and replace their snapshots. Known, left as they are: batches waiting in Redis (deferred by quiet
hours, held by a pause) and the send ledger's entries keep the bare id until they are released (then
refused) or expire. Herald writes no export file: the export is the HTTP answer itself.

An unsubscribe outlives its person as ``address_hash`` = HMAC-SHA256(key, normalised address): the
address is gone, yet the same address signing up again can be matched against it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone

# Every store an erasure covers, in the order the API reports them.
API_STORES = ("postgres", "cassandra_events", "cassandra_messages", "redis", "kafka_topics")
WORKER_STORES = ("faust_tables",)
STORES = API_STORES + WORKER_STORES

PENDING, DONE = "pending", "done"
ERASED_REASON = "erased"  # the gate's suppression reason for a marked user


def marker_key(signing_key: bytes) -> bytes:
    """The subkey of the erased-users markers and address hashes (never the signing key itself)."""
    return hmac.new(signing_key, b"herald:erasure", hashlib.sha256).digest()


def user_marker(key: bytes, user_id: int) -> bytes:
    """The keyed hash that stands for an erased user id."""
    return hmac.new(key, b"user:" + str(int(user_id)).encode(), hashlib.sha256).digest()


def address_hash(key: bytes, address: str) -> bytes:
    """The keyed hash that keeps an erased person's opt-out for ``address`` (case and spaces ignored)."""
    return hmac.new(key, b"address:" + address.strip().lower().encode(), hashlib.sha256).digest()


def initial_states() -> dict[str, str]:
    return {store: PENDING for store in STORES}


def settle(states: Mapping[str, str], updates: Mapping[str, str]) -> dict[str, str]:
    """``states`` with ``updates`` applied; a store already done stays done (a retry cannot undo it)."""
    out = dict(states)
    for store, state in updates.items():
        if out.get(store) != DONE:
            out[store] = state
    return out


def all_done(states: Mapping[str, str]) -> bool:
    return all(states.get(store) == DONE for store in STORES)


def is_new_signup(created_at: datetime | None, erased_at: datetime) -> bool:
    """A profile of an erased user is a new sign-up only if it says it was created after the erasure."""
    if created_at is None:
        return False
    if created_at.tzinfo is None:  # a time without a zone is UTC, as everything Herald stores is
        created_at = created_at.replace(tzinfo=timezone.utc)
    return created_at > erased_at


def months_back(today: date, days: int) -> list[str]:
    """The ``user_events`` months ("YYYY-MM") from ``days`` before ``today`` up to today's month."""
    months, day = [], today.replace(day=1)
    first = (today - timedelta(days=days)).replace(day=1)
    while day >= first:
        months.append(day.strftime("%Y-%m"))
        day = (day - timedelta(days=1)).replace(day=1)
    return months


def days_between(start: date, end: date) -> list[date]:
    """Every day from ``start`` to ``end`` inclusive (empty when start is after end)."""
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def without_user(bucket: Mapping | None, user_id: int) -> dict | None:
    """A gate bucket (``{"<uid>": ...}``) without the user: None when the user was not in it (no write
    needed), ``{}`` when it is left empty (the caller writes a tombstone)."""
    if not bucket or str(user_id) not in bucket:
        return None
    return {uid: entry for uid, entry in bucket.items() if uid != str(user_id)}


USER_BUCKET_SHIFT = 9  # message_log_by_user: 512 consecutive user ids per partition


def user_bucket(user_id: int) -> int:
    return user_id >> USER_BUCKET_SHIFT


def log_index_rows(log_rows: Iterable[tuple]) -> list[tuple]:
    """``message_log_by_user`` rows (user_bucket, user_id, campaign_id, day) of ``message_log`` rows
    (campaign_id, day, shard, sent_at, message_id, user_id, ...), each once."""
    seen = {(row[5], row[0], row[1]) for row in log_rows}
    return [(user_bucket(uid), uid, campaign, day) for uid, campaign, day in sorted(seen)]


def screen_erased(records: Sequence[tuple[int, datetime | None]],
                  markers: Mapping[int, datetime]) -> tuple[list[bool], set[int]]:
    """For records ``(user_id, created_at)`` (created_at None for an event): whether each is kept, and the
    users a new sign-up brings back (their marker is to be cleared). A marked user's record is kept only
    when it is a new sign-up."""
    keep, signups = [], set()
    for user_id, created_at in records:
        erased_at = markers.get(user_id)
        if erased_at is None:
            keep.append(True)
        elif is_new_signup(created_at, erased_at):
            keep.append(True)
            signups.add(user_id)
        else:
            keep.append(False)
    return keep, signups

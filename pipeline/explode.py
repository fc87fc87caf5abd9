"""The explode stage's decisions: variants, languages, batches and where to resume. Pure, no I/O.

A launch's audience is frozen once as a sorted array of user ids. Everything
else follows from that array deterministically, so a worker that restarts
rebuilds exactly the batches it built before:

    ids ──user_partitions──► per partition, in id order ──cut every batch_size──►
        chunk c = the c-th slice of every partition (at most one record per partition)
        batch_id = "<launch_id>:<c>:<p>"

A chunk is the unit of the durable checkpoint (``ExplodePlan.chunks``);
within a chunk each partition gets one record of up to ``batch_size``
recipients, so every record is full except a partition's last.

A/B variants come from a 64-bit hash of ``(campaign_id, user_id)`` mapped onto
the cumulative weights: the same user gets the same variant of a campaign in
every run, worker and restart, and different campaigns split users
independently. The hash is splitmix64 (a bijective 64-bit mixer) applied to
the user id offset by a mix of the campaign id; over uniform 53-bit fractions
the weights are honoured to sampling error (about ±0.3 % at 100k users).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from pipeline.campaigns import is_date_trigger
from pipeline.partitioning import user_partitions

BATCH_SIZE = 500  # recipients per record: ~25 kB of JSON, Faust's per-record cost paid once per 500 users
DEFAULT_LANGUAGE = "en"
TRANSACTIONAL = "transactional"
PROMOTIONAL = "promotional"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


# ---------------------------------------------------------------- A/B variants


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 (wrapping multiplication, as in C)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def assignment_hash(campaign_id: int, user_ids: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of ``campaign_id:user_id`` for each user, as uint64."""
    with np.errstate(over="ignore"):
        salt = _splitmix64(np.array([campaign_id], dtype=np.int64).view(np.uint64) * _GOLDEN + _GOLDEN)[0]
        ids = np.asarray(user_ids, dtype=np.int64).view(np.uint64)
        return _splitmix64(ids + salt)


def variant_indices(campaign_id: int, user_ids: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Index into ``weights`` of each user's variant (int8); weights need not sum to 100."""
    w = np.asarray(weights, dtype=np.float64)
    if not len(w) or (w <= 0).any():
        raise ValueError("variants need positive weights")
    bounds = np.cumsum(w) / w.sum()
    fraction = (assignment_hash(campaign_id, user_ids) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.minimum(np.searchsorted(bounds, fraction, side="right"), len(w) - 1).astype(np.int8)


def assign_variants(campaign_id: int, user_ids: np.ndarray, variants: Sequence[tuple[str, float]]
                    ) -> np.ndarray | None:
    """Each user's variant id (an object array), or None when the campaign has no A/B test."""
    if not variants:
        return None
    names = np.array([v[0] for v in variants], dtype=object)
    return names[variant_indices(campaign_id, user_ids, [v[1] for v in variants])]


def variant_of(campaign_id: int, user_id: int, variants: Sequence[tuple[str, float]]) -> str | None:
    """One user's variant: the same answer ``assign_variants`` gives inside a whole audience."""
    found = assign_variants(campaign_id, np.array([user_id], dtype=np.int64), variants)
    return None if found is None else str(found[0])


# ---------------------------------------------------------------- languages


def choose_languages(codes: np.ndarray, values: Sequence[str | None], default: str = DEFAULT_LANGUAGE
                     ) -> tuple[np.ndarray, list[str]]:
    """Dictionary-encoded languages with unknown or blank ones replaced by ``default``.

    ``codes[i]`` indexes ``values`` (-1: unknown). Returns ``(codes, values)``
    with every code valid (uint8 if there are few languages).
    """
    names = [(v or "").strip() or default for v in values]
    table = list(dict.fromkeys([default, *names]))  # default first, then in first-seen order
    remap = np.array([table.index(n) for n in names] + [0], dtype=np.int32)  # the extra slot maps -1 to default
    codes = np.asarray(codes, dtype=np.int64)
    out = remap[np.where(codes < 0, len(names), codes)]
    dtype = np.uint8 if len(table) <= 256 else np.int32
    return out.astype(dtype), table


# ---------------------------------------------------------------- the category a campaign sends as


def campaign_category(channels: Sequence[str], template_categories: Mapping[str, str | None]) -> str:
    """The category of a campaign's messages: its templates' (first channel that names one), else promotional."""
    for channel in channels:
        category = template_categories.get(channel)
        if category:
            return category
    return PROMOTIONAL


def expected_messages(recipients: int, channels: Sequence[str]) -> int:
    """How many messages a launch must account for: every recipient on every channel."""
    return recipients * len(channels)


# ---------------------------------------------------------------- batches


def batch_id(launch_id: uuid.UUID | str, chunk: int, partition: int) -> str:
    return f"{launch_id}:{chunk}:{partition}"


def parse_batch_id(value: str) -> tuple[str, int, int] | None:
    """``(launch_id, chunk, partition)`` of an explode batch id, or None for any other id."""
    parts = value.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


@dataclass(frozen=True)
class ExplodePlan:
    """How a frozen audience is cut into records: ``order[starts[p]:starts[p+1]]`` are partition p's users."""

    partitions: int
    batch_size: int
    order: np.ndarray    # positions into the audience array, grouped by partition, ascending id within each
    starts: np.ndarray   # len partitions + 1

    @property
    def chunks(self) -> int:
        sizes = np.diff(self.starts)
        return int(-(-sizes.max() // self.batch_size)) if len(sizes) and sizes.max() else 0

    def chunk(self, c: int) -> list[tuple[int, np.ndarray]]:
        """Chunk ``c``: ``(partition, positions)`` for every partition with users left at that depth."""
        out = []
        for p in range(self.partitions):
            lo = self.starts[p] + c * self.batch_size
            hi = min(lo + self.batch_size, self.starts[p + 1])
            if lo < hi:
                out.append((p, self.order[lo:hi]))
        return out


def plan(user_ids: np.ndarray, partitions: int, batch_size: int = BATCH_SIZE) -> ExplodePlan:
    """Group sorted ``user_ids`` by their Kafka partition, keeping id order within each."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    parts = user_partitions(user_ids, partitions)
    order = np.argsort(parts, kind="stable")
    counts = np.bincount(parts, minlength=partitions)
    starts = np.zeros(partitions + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return ExplodePlan(partitions, batch_size, order, starts)


def pending_batches(plan: ExplodePlan, next_chunk: int, already_sent: Iterable[tuple[int, int]]
                    ) -> list[tuple[int, list[int]]]:
    """What is left to emit after a restart: ``(chunk, [partitions])`` from the checkpoint on.

    ``next_chunk`` is the durable checkpoint (every chunk before it is acknowledged);
    ``already_sent`` are the ``(chunk, partition)`` records found on the topic after
    the checkpoint's offsets (sent, acknowledged or not, before the crash). Those are
    skipped, so a resume neither repeats nor loses a recipient.
    """
    sent = set(already_sent)
    left = []
    for c in range(next_chunk, plan.chunks):
        todo = [p for p, _ in plan.chunk(c) if (c, p) not in sent]
        if todo:
            left.append((c, todo))
    return left


class BatchWriter:
    """Builds the JSON bytes of ``MessageBatch`` records for one launch, without a model per recipient.

    The common fields are rendered once; each record adds its recipients as plain
    dicts that orjson serializes in one call (pydantic per recipient costs ~10×).
    """

    def __init__(self, *, launch_id: uuid.UUID, campaign_id: int, category: str, transactional: bool,
                 launched_at: datetime, user_ids: np.ndarray, variants: np.ndarray | None,
                 language_codes: np.ndarray, languages: Sequence[str], step: str = "send") -> None:
        self.launch_id = launch_id
        self.common: dict[str, Any] = {
            "campaign_id": campaign_id, "launch_id": str(launch_id), "step": step, "channel": None,
            "category": category, "transactional": transactional, "launched_at": launched_at.isoformat(),
            "attempt": 0,
        }
        self.user_ids = user_ids
        self.variants = variants
        self.language_codes = language_codes
        self.languages = np.array(list(languages), dtype=object)

    def record(self, chunk: int, partition: int, positions: np.ndarray) -> tuple[str, bytes]:
        """``(batch_id, value)`` of one record."""
        ids = self.user_ids[positions].tolist()
        langs = self.languages[self.language_codes[positions]].tolist()
        if self.variants is None:
            recipients = [{"user_id": u, "language": lang} for u, lang in zip(ids, langs)]
        else:
            recipients = [{"user_id": u, "variant": v, "language": lang}
                          for u, v, lang in zip(ids, self.variants[positions].tolist(), langs)]
        bid = batch_id(self.launch_id, chunk, partition)
        value = orjson.dumps({"batch_id": bid, **self.common, "partition": partition, "recipients": recipients})
        return bid, value


# ---------------------------------------------------------------- the frozen audience, packed


def pack_ids(sorted_ids: np.ndarray) -> bytes:
    """Sorted int64 ids as zlib-compressed deltas (a million ids of a dense range: a few kB)."""
    ids = np.asarray(sorted_ids, dtype=np.int64)
    deltas = np.diff(ids, prepend=np.int64(0)) if len(ids) else ids
    return zlib.compress(deltas.astype("<i8").tobytes(), 1)


def unpack_ids(blob: bytes) -> np.ndarray:
    deltas = np.frombuffer(zlib.decompress(blob), dtype="<i8")
    return np.cumsum(deltas, dtype=np.int64)


def pack_codes(codes: np.ndarray) -> bytes:
    return zlib.compress(np.asarray(codes, dtype=np.int32).astype("<i4").tobytes(), 1)


def unpack_codes(blob: bytes) -> np.ndarray:
    codes = np.frombuffer(zlib.decompress(blob), dtype="<i4")
    return codes.astype(np.uint8) if len(codes) and codes.max() < 256 else codes.astype(np.int32)


def advance_offsets(offsets: Mapping[int, int], acked: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Per partition, the offset after the last acknowledged record (``acked``: (partition, offset))."""
    out = dict(offsets)
    for partition, offset in acked:
        if offset + 1 > out.get(partition, -1):
            out[partition] = offset + 1
    return out


# ---------------------------------------------------------------- one launch: what becomes of it

SUPERSEDED = "not the current launch"


@dataclass(frozen=True)
class Outcome:
    """What exploding one launch record did."""

    state: str  # "done" (now), "already" (done before), "skipped"
    recipients: int = 0
    emitted: int = 0  # records sent by this call
    reason: str | None = None
    letter: bool = False  # skipped now for a reason an operator should see (a dead letter)


PER_EVENT = "a triggered campaign sends per event"  # its launch is the start of listening: nothing to letter


def skipped(reason: str) -> Outcome:
    """A launch skipped for ``reason``: dead-lettered, unless it was merely superseded by a newer launch."""
    return Outcome("skipped", reason=reason, letter=not reason.startswith((SUPERSEDED, PER_EVENT)))


def superseded(campaign_id: int, committed: uuid.UUID) -> str:
    return f"{SUPERSEDED}: campaign {campaign_id}'s committed launch is {committed}, not this one"


def no_audience_reason(launch_type: str, segment_id: int | None, trigger: Mapping[str, Any] | None = None
                       ) -> str | None:
    """Why a launch has no audience to freeze, or None if it has one (a date trigger's daily run has one:
    its segment's members whose anniversary the run covers)."""
    if launch_type == "triggered" and not is_date_trigger(trigger):
        return f"{PER_EVENT} (match_triggers), not to a frozen audience"
    if segment_id is None:
        return "the launch names no target segment"
    return None


def lock_key(launch_id: uuid.UUID) -> int:
    """The PostgreSQL advisory lock that fences a second worker exploding the same launch."""
    return int.from_bytes(launch_id.bytes[:8], "big", signed=True)


def launch_variants(campaign_id: int, variants: Sequence[Any], user_ids: np.ndarray) -> np.ndarray | None:
    """Each user's variant of the launch's A/B test (``variants``: records with ``id`` and ``weight``)."""
    return assign_variants(campaign_id, user_ids, [(v.id, v.weight) for v in variants]) if variants else None


def windows(todo: Sequence[tuple[int, list[int]]], plan: ExplodePlan, window_recipients: int,
            first_until: int = -1) -> list[Sequence[tuple[int, list[int]]]]:
    """The pending batches cut into windows of about ``window_recipients`` (one checkpoint each).

    A resume's first window reaches past every chunk found sent after the checkpoint (``first_until``),
    so the next checkpoint's offsets never pass a record of ours that a later scan would then miss.
    """
    per_window = max(1, window_recipients // max(1, plan.partitions * plan.batch_size))
    out, start = [], 0
    while start < len(todo):
        end = start + per_window
        while start == 0 and end < len(todo) and todo[end - 1][0] < first_until:
            end += 1
        out.append(todo[start:end])
        start = end
    return out

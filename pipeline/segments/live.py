"""A process's live audience: the newest snapshot plus the tail of the user topics.

    async with open_audience(settings) as store:   # AudienceStore, kept current
        store.estimate(criteria)

On entry the newest snapshot under ``settings.audience_dir`` is loaded (never
PostgreSQL), then one task follows ``user-profiles`` and ``user-events``:
every partition assigned by hand (no consumer group, so every process sees
every user), each resumed just after the offset the snapshot recorded, or
from the beginning without one. Records are applied in batches every
``audience_poll_ms``; invalid ones are skipped (the ingest stage dead-letters
them). Every ``audience_snapshot_s`` a forked child writes a snapshot while
applying goes on (``snapshot.fork_snapshot``); on exit the follower stops and
the store is written once more, so a restart reads only what came after.

Erasure (pipeline/erase.py): a tombstone on ``user-profiles`` removes the user's row; a snapshot is
written at once and every older one deleted (they hold the user). The keyed hash of the id stays in
``store.erased`` so that a later profile or event does not bring them back, unless it is a new
sign-up's profile (created after the erasure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from config import Settings
from pipeline import erase
from pipeline.signing import signing_key
from pipeline.segments.columns import from_micros
from pipeline.segments.snapshot import KEEP, fork_snapshot, read_newest, write_snapshot
from pipeline.segments.store import AudienceStore
from schemas.records import UserEvent, UserProfile
from schemas.topics import USER_EVENTS, USER_PROFILES

log = structlog.get_logger("herald.segments")

MAX_RECORDS = 5000  # per poll: bounds how long one apply holds the event loop


@contextlib.asynccontextmanager
async def open_audience(settings: Settings) -> AsyncIterator[AudienceStore]:
    """Yield a store that follows the user topics until the context exits."""
    store = await asyncio.to_thread(read_newest, settings.audience_dir) or AudienceStore()
    follower = _Follower(store, settings)
    await follower.start()
    try:
        yield store
    finally:
        await follower.stop()


class _Follower:
    def __init__(self, store: AudienceStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_brokers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=settings.audience_poll_ms,  # an idle topic answers within one poll
        )
        self.task: asyncio.Task | None = None
        self.snapshot_version = store.version
        self.snapshot_at = time.monotonic()
        self.child: tuple[int, int] | None = None  # (pid, store version) of a snapshot being written
        self.erase_key = erase.marker_key(signing_key(settings))
        self.erasing = False  # users were removed: snapshot now, and drop the older snapshots that hold them
        self.snapshotted = bool(store.offsets)  # a snapshot of this store exists (loaded from one, or written)

    async def start(self) -> None:
        await self.consumer.start()
        partitions = []
        for topic in (USER_PROFILES.name, USER_EVENTS.name):
            ids = self.consumer.partitions_for_topic(topic)
            if not ids:
                await self.consumer._client.force_metadata_update()
                ids = self.consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        self.consumer.assign(partitions)
        for tp in partitions:
            last = self.store.offsets.get(tp.topic, {}).get(tp.partition)
            if last is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, last + 1)
        self.task = asyncio.create_task(self._run(), name="audience-follower")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()
        if self.child is not None:
            await asyncio.to_thread(self._reap, 0)
        if self.store.version != self.snapshot_version:
            await self._snapshot()

    async def _run(self) -> None:
        poll_ms = self.settings.audience_poll_ms
        while True:
            try:
                batch = await self.consumer.getmany(timeout_ms=poll_ms, max_records=MAX_RECORDS)
                if batch:
                    self._apply(batch)
                if self.child is not None:
                    self._reap(os.WNOHANG)
                elif self.erasing or (time.monotonic() - self.snapshot_at >= self.settings.audience_snapshot_s
                                      and self.store.version != self.snapshot_version):
                    await self._snapshot_in_background()
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker went away, the disk is full...: keep serving, retry
                log.exception("audience follower failed; retrying")
                await asyncio.sleep(1.0)

    def _apply(self, batch: dict) -> None:
        profiles: list[UserProfile] = []
        events: list[UserEvent] = []
        tombstones: dict[int, int] = {}  # erased user → erasure time, µs (a tombstone on user-profiles)
        for tp, messages in batch.items():
            model, into = (UserProfile, profiles) if tp.topic == USER_PROFILES.name else (UserEvent, events)
            for message in messages:
                if message.value:
                    try:
                        into.append(model.model_validate_json(message.value))
                    except ValidationError:
                        pass  # dead-lettered by the ingest stage
                elif tp.topic == USER_PROFILES.name and (message.key or b"").isdigit():
                    tombstones[int(message.key)] = message.timestamp * 1000
            if messages:
                self.store.offsets.setdefault(tp.topic, {})[tp.partition] = messages[-1].offset
        if tombstones or self.store.erased:
            profiles, events = self._screen(tombstones, profiles, events)
        # Profiles first: an event in the same batch then lands on the user's fresh row.
        self.store.apply_profiles(profiles)
        self.store.apply_events(events)

    def _screen(self, tombstones: dict[int, int], profiles: list[UserProfile], events: list[UserEvent]
                ) -> tuple[list[UserProfile], list[UserEvent]]:
        """Erased users (pipeline/erase.py) leave the store; their later records are dropped unless a new
        sign-up's profile (created after the erasure) brings them back."""
        erased = self.store.erased
        for user_id, at in tombstones.items():
            erased[erase.user_marker(self.erase_key, user_id).hex()] = at
        ids = {r.user_id for r in (*profiles, *events)}
        markers = {u: from_micros(erased[m]) for u in ids
                   if (m := erase.user_marker(self.erase_key, u).hex()) in erased}
        keep_p, signups = erase.screen_erased([(p.user_id, p.created_at) for p in profiles], markers)
        keep_e, _ = erase.screen_erased([(e.user_id, None) for e in events], markers)
        for user_id in signups:
            erased.pop(erase.user_marker(self.erase_key, user_id).hex(), None)
        if self.store.remove_users(u for u in tombstones if u not in signups) and self.snapshotted:
            self.erasing = True  # (a store never snapshotted is in no snapshot yet)
        return ([p for p, k in zip(profiles, keep_p) if k],
                [e for e, k in zip(events, keep_e) if k or e.user_id in signups])

    async def _snapshot_in_background(self) -> None:
        self.snapshot_at = time.monotonic()
        keep, self.erasing = (1 if self.erasing else KEEP), False
        pid = fork_snapshot(self.store, self.settings.audience_dir, keep)
        if pid is None:
            await self._snapshot(keep)
        else:
            self.child = (pid, self.store.version)

    def _reap(self, flags: int) -> None:
        """Collect the snapshot child if it has finished (``flags=0``: wait for it)."""
        assert self.child is not None
        pid, version = self.child
        done, status = os.waitpid(pid, flags)
        if done:
            self.child = None
            if os.waitstatus_to_exitcode(status) == 0:
                self.snapshot_version = version
                self.snapshotted = True
            else:
                log.error("audience snapshot child failed", status=status)

    async def _snapshot(self, keep: int = KEEP) -> None:
        version = self.store.version
        try:
            await asyncio.to_thread(write_snapshot, self.store, self.settings.audience_dir, keep)
        except OSError:
            log.exception("audience snapshot failed")
            return
        finally:
            self.snapshot_at = time.monotonic()
        self.snapshot_version = version
        self.snapshotted = True

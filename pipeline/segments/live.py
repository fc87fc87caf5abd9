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
from pipeline.segments.snapshot import fork_snapshot, read_newest, write_snapshot
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
                elif (time.monotonic() - self.snapshot_at >= self.settings.audience_snapshot_s
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
        for tp, messages in batch.items():
            model, into = (UserProfile, profiles) if tp.topic == USER_PROFILES.name else (UserEvent, events)
            for message in messages:
                if message.value:
                    try:
                        into.append(model.model_validate_json(message.value))
                    except ValidationError:
                        pass  # dead-lettered by the ingest stage
            if messages:
                self.store.offsets.setdefault(tp.topic, {})[tp.partition] = messages[-1].offset
        # Profiles first: an event in the same batch then lands on the user's fresh row.
        self.store.apply_profiles(profiles)
        self.store.apply_events(events)

    async def _snapshot_in_background(self) -> None:
        self.snapshot_at = time.monotonic()
        pid = fork_snapshot(self.store, self.settings.audience_dir)
        if pid is None:
            await self._snapshot()
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
            else:
                log.error("audience snapshot child failed", status=status)

    async def _snapshot(self) -> None:
        version = self.store.version
        try:
            await asyncio.to_thread(write_snapshot, self.store, self.settings.audience_dir)
        except OSError:
            log.exception("audience snapshot failed")
            return
        finally:
            self.snapshot_at = time.monotonic()
        self.snapshot_version = version

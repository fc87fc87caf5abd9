"""The explode stage's store calls, and the order it makes them in for one launch.

PostgreSQL: an advisory lock per launch (session level, on one pooled connection held for
the launch), ``launch_audiences`` (the frozen audience and its checkpoint), ``campaigns``
(the committed launch id), ``segments``, ``templates`` (the category).
Redis: ``campaign:{id}:status|launch`` at the start, ``:expected|audience`` at the end
(``pipeline.campaign_state``).
Kafka: ``message-requests`` written through the worker's idempotent producer; its end
offsets and, on a resume, the records after the checkpoint read back by a consumer
outside any group.

The decisions (batches, variants, windows, where to resume, why a launch is skipped) are
``pipeline.explode``'s. ``main`` explodes one launch from the command line
(``python -m agents.explode --launch-file f.json``; the tests kill it mid-launch).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence

import asyncpg
import numpy as np
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from config import Settings
from pipeline.anniversaries import celebrating
from pipeline.campaign_state import begin_launch, finish_launch
from pipeline.campaigns import is_date_trigger
from pipeline.explode import (
    BATCH_SIZE, TRANSACTIONAL, BatchWriter, ExplodePlan, Outcome, advance_offsets, campaign_category,
    expected_messages, launch_variants, lock_key, no_audience_reason, pack_codes, pack_ids, parse_batch_id,
    pending_batches, plan, skipped, superseded, unpack_codes, unpack_ids, windows,
)
from pipeline.gate import local_delivery
from pipeline.launch_audience import AudienceError, WorkerAudience, resolve_audience
from pipeline.worker_clients import WorkerClients
from schemas.campaigns import CampaignLaunch
from schemas.encoding import from_json
from schemas.topics import MESSAGE_REQUESTS

log = structlog.get_logger("herald.explode")

WINDOW_RECIPIENTS = 50_000  # recipients acknowledged per checkpoint write
COMMIT_WAIT_S = 2.0  # how long to wait for the API to commit the launch it published
SCAN_TIMEOUT_S = 120.0  # reading back what was sent since the checkpoint (a resume only)
PROFILE_CHUNK = 50_000  # profiles read per query when a date trigger picks its day's members


class Exploder:
    """Explodes launches over the worker's shared clients; owns only a metadata consumer (``start``/``stop``)."""

    def __init__(self, settings: Settings, clients: WorkerClients, audience: WorkerAudience | None = None, *,
                 pace_s: float = 0.0, window_recipients: int = WINDOW_RECIPIENTS, batch_size: int = BATCH_SIZE
                 ) -> None:
        self.settings = settings
        self.clients = clients
        self.audience = audience
        self.pace_s = pace_s
        self.window_recipients = window_recipients
        self.batch_size = batch_size
        self.topic = MESSAGE_REQUESTS.name
        self.reader: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.reader = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_brokers, group_id=None,
                                       enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024)
        await self.reader.start()

    async def stop(self) -> None:
        if self.reader is not None:
            await self.reader.stop()

    # ── one launch ────────────────────────────────────────────────────────────

    async def explode(self, launch: CampaignLaunch) -> Outcome:
        pool = await self.clients.postgres()
        async with pool.acquire() as conn:
            key = lock_key(launch.launch_id)
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            try:
                return await self._explode_locked(conn, launch)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def _explode_locked(self, conn: asyncpg.Connection, launch: CampaignLaunch) -> Outcome:
        row = await conn.fetchrow("SELECT * FROM launch_audiences WHERE launch_id = $1", launch.launch_id)
        if row is not None and row["state"] != "exploding":
            return Outcome("already", row["size"], reason=row["reason"])
        fresh = row is None
        if fresh:
            row = await self._freeze(conn, launch)
            if row["state"] == "skipped":
                log.warning("launch skipped", campaign_id=launch.campaign_id, launch_id=str(launch.launch_id),
                            reason=row["reason"])
                return skipped(row["reason"])
        redis = self.clients.redis()
        status = await begin_launch(redis, launch.campaign_id, launch.launch_id)

        started = time.perf_counter()
        ids = unpack_ids(row["members"])
        cut = plan(ids, row["partitions"], row["batch_size"])
        offsets = {int(p): o for p, o in orjson.loads(row["offsets"]).items()}
        sent = set() if fresh else await self._sent_since(launch.launch_id, offsets)
        todo = pending_batches(cut, row["next_chunk"], sent)
        category = await self._category(conn, launch)
        writer = BatchWriter(
            launch_id=launch.launch_id, campaign_id=launch.campaign_id, category=category,
            transactional=category == TRANSACTIONAL, launched_at=launch.launched_at, user_ids=ids,
            variants=launch_variants(launch.campaign_id, launch.variants, ids),
            language_codes=unpack_codes(row["language_codes"]), languages=row["languages"], step=launch.step,
        )
        first_until = max((c for c, _ in sent), default=-1)
        emitted = await self._emit(conn, launch.launch_id, cut, writer, todo, offsets, first_until)
        recipients = len(ids)
        await finish_launch(redis, launch.campaign_id, recipients, expected_messages(recipients, launch.channels))
        await conn.execute(
            # The frozen audience served the explode alone: a finished launch keeps its size, not its people.
            "UPDATE launch_audiences SET state = 'done', next_chunk = $2, updated_at = now(), finished_at = now(),"
            " members = NULL, language_codes = NULL WHERE launch_id = $1", launch.launch_id, cut.chunks,
        )
        seconds = time.perf_counter() - started
        log.info("launch exploded", campaign_id=launch.campaign_id, launch_id=str(launch.launch_id),
                 recipients=recipients, records=emitted, resumed=not fresh, skipped_on_resume=len(sent),
                 status=status, seconds=round(seconds, 3))
        return Outcome("done", recipients, emitted)

    async def _freeze(self, conn: asyncpg.Connection, launch: CampaignLaunch) -> asyncpg.Record:
        """Resolve and store the audience (or why there is none) the first time a launch is seen."""
        reason = (await self._not_current(conn, launch)
                  or no_audience_reason(launch.type, launch.segment_id, launch.trigger))
        ids = np.empty(0, dtype=np.int64)
        codes, languages = np.empty(0, dtype=np.uint8), ["en"]
        if reason is None:
            try:
                store = await self._store(conn, launch.segment_id)
                ids, codes, languages = await resolve_audience(conn, launch.segment_id, store)
            except AudienceError as exc:
                reason = str(exc)
        if reason is None and is_date_trigger(launch.trigger):
            keep = np.isin(ids, await self._celebrating(conn, launch, ids))
            ids, codes = ids[keep], codes[keep]
        offsets = await self._end_offsets()
        return await conn.fetchrow(
            "INSERT INTO launch_audiences (launch_id, campaign_id, segment_id, state, reason, size, partitions,"
            " batch_size, chunks, members, language_codes, languages, offsets)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb) RETURNING *",
            launch.launch_id, launch.campaign_id, launch.segment_id, "skipped" if reason else "exploding", reason,
            len(ids), MESSAGE_REQUESTS.partitions, self.batch_size,
            plan(ids, MESSAGE_REQUESTS.partitions, self.batch_size).chunks,
            pack_ids(ids), pack_codes(codes), languages, orjson.dumps({str(p): o for p, o in offsets.items()}).decode(),
        )

    async def _celebrating(self, conn: asyncpg.Connection, launch: CampaignLaunch, ids: np.ndarray) -> list[int]:
        """The members whose anniversary of the trigger's date this daily run covers (pipeline/anniversaries.py),
        read from their profiles a chunk at a time; the hour and the campaign's zone are its delivery's."""
        row = await conn.fetchrow("SELECT delivery, schedule FROM campaigns WHERE campaign_id = $1", launch.campaign_id)
        local = local_delivery(from_json(row["delivery"]) if row else None, from_json(row["schedule"]) if row else None)
        if local is None:  # validated at authoring: a date trigger has a local hour
            return []
        fired_at = launch.occurrence or launch.launched_at
        chosen: list[int] = []
        for start in range(0, len(ids), PROFILE_CHUNK):
            rows = await conn.fetch("SELECT user_id, timezone, attributes, created_at FROM users"
                                    " WHERE user_id = ANY($1::bigint[])", ids[start:start + PROFILE_CHUNK].tolist())
            profiles = ({**dict(r), "attributes": from_json(r["attributes"]) or {}} for r in rows)
            chosen += celebrating(profiles, launch.trigger["date_field"], local.at, local.timezone, fired_at)
        return chosen

    async def _store(self, conn: asyncpg.Connection, segment_id: int):
        """The live audience store, caught up, for a dynamic segment (static ones are read from PostgreSQL)."""
        dynamic = await conn.fetchval("SELECT kind = 'dynamic' FROM segments WHERE segment_id = $1", segment_id)
        if not dynamic or self.audience is None:
            return None
        return await self.audience.current(timeout_s=60.0)  # a timeout is transient: the record is retried

    async def _not_current(self, conn: asyncpg.Connection, launch: CampaignLaunch) -> str | None:
        """Why this record is not the campaign's committed launch, or None if it is (or cannot be told).

        The API commits ``campaigns.launch_id`` just after Kafka acknowledged the record,
        so a short wait covers that gap. A different launch committed in its place means
        this one failed or was superseded; no committed launch at all (a record written
        by hand, or an API that failed after publishing) is given the benefit of the doubt.
        """
        deadline = time.monotonic() + COMMIT_WAIT_S
        while True:
            row = await conn.fetchrow("SELECT launch_id FROM campaigns WHERE campaign_id = $1", launch.campaign_id)
            if row is None or row["launch_id"] == launch.launch_id:
                return None
            if time.monotonic() > deadline:
                return None if row["launch_id"] is None else superseded(launch.campaign_id, row["launch_id"])
            await asyncio.sleep(0.1)

    async def _category(self, conn: asyncpg.Connection, launch: CampaignLaunch) -> str:
        wanted = {ch: e.get("template_id") for ch, e in launch.content.items() if isinstance(e, dict)}
        ids = [t for t in wanted.values() if isinstance(t, int) and not isinstance(t, bool)]
        found = {}
        if ids:
            rows = await conn.fetch("SELECT template_id, category FROM templates WHERE template_id = ANY($1::bigint[])",
                                    ids)
            found = {r["template_id"]: r["category"] for r in rows}
        return campaign_category(launch.channels, {ch: found.get(t) for ch, t in wanted.items()})

    # ── Kafka ─────────────────────────────────────────────────────────────────

    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in range(MESSAGE_REQUESTS.partitions)]

    async def _end_offsets(self) -> dict[int, int]:
        assert self.reader is not None
        ends = await self.reader.end_offsets(self._partitions())
        return {tp.partition: offset for tp, offset in ends.items()}

    async def _sent_since(self, launch_id: uuid.UUID, offsets: dict[int, int]) -> set[tuple[int, int]]:
        """``(chunk, partition)`` of this launch's records written after the checkpoint's offsets."""
        assert self.reader is not None
        ends = await self._end_offsets()
        wanted = {TopicPartition(self.topic, p): o for p, o in offsets.items() if o < ends.get(p, 0)}
        sent: set[tuple[int, int]] = set()
        if not wanted:
            return sent
        self.reader.assign(list(wanted))
        for tp, offset in wanted.items():
            self.reader.seek(tp, offset)
        remaining = set(wanted)
        prefix = str(launch_id)
        deadline = time.monotonic() + SCAN_TIMEOUT_S
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.topic} up to {ends} to resume launch {launch_id}")
            batch = await self.reader.getmany(*remaining, timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset >= ends[tp.partition]:
                        continue
                    parsed = parse_batch_id(m.key.decode("ascii", "replace")) if m.key else None
                    if parsed and parsed[0] == prefix:
                        sent.add((parsed[1], parsed[2]))
            # By position, not by the last record seen: the log may end in a control record.
            remaining = {tp for tp in remaining if await self.reader.position(tp) < ends[tp.partition]}
        self.reader.assign([])
        return sent

    async def _emit(self, conn: asyncpg.Connection, launch_id: uuid.UUID, cut: ExplodePlan, writer: BatchWriter,
                    todo: Sequence[tuple[int, list[int]]], offsets: dict[int, int], first_until: int = -1) -> int:
        """Send the pending batches window by window, checkpointing after each acknowledged window."""
        producer = await self.clients.producer()
        emitted = 0
        for window in windows(todo, cut, self.window_recipients, first_until):
            futures = []
            for chunk, partitions in window:
                wanted = set(partitions)
                for partition, positions in cut.chunk(chunk):
                    if partition in wanted:
                        bid, value = writer.record(chunk, partition, positions)
                        futures.append(await producer.send(self.topic, value, key=bid.encode(), partition=partition))
            acked = await asyncio.gather(*futures)
            offsets = advance_offsets(offsets, ((m.partition, m.offset) for m in acked))
            emitted += len(acked)
            if self.pace_s:  # a throttle; placed before the checkpoint, it also widens what a crash test hits
                await asyncio.sleep(self.pace_s)
            await conn.execute(
                "UPDATE launch_audiences SET next_chunk = $2, offsets = $3::jsonb, updated_at = now()"
                " WHERE launch_id = $1",
                launch_id, window[-1][0] + 1, orjson.dumps({str(p): o for p, o in offsets.items()}).decode(),
            )
        return emitted


# ── one launch from the command line (tests: a process to SIGKILL mid-launch) ─


async def main(argv: Sequence[str], settings: Settings) -> None:
    """``--launch-file f.json [--pace-s S --window N]``: explode one launch in this process, outside any
    consumer group, over clients of its own; prints the outcome as JSON."""
    parser = argparse.ArgumentParser(description="Explode one campaign launch (JSON CampaignLaunch)")
    parser.add_argument("--launch-file", required=True)
    parser.add_argument("--pace-s", type=float, default=0.0, help="pause after each window, before its checkpoint")
    parser.add_argument("--window", type=int, default=WINDOW_RECIPIENTS, help="recipients per checkpoint")
    args = parser.parse_args(argv)
    with open(args.launch_file, "rb") as f:
        launch = CampaignLaunch.model_validate_json(f.read())
    clients = WorkerClients(settings)
    exploder = Exploder(settings, clients, None, pace_s=args.pace_s, window_recipients=args.window)
    await exploder.start()
    try:
        outcome = await exploder.explode(launch)
        print(orjson.dumps(outcome.__dict__).decode(), flush=True)
    finally:
        await exploder.stop()
        await clients.close()

"""The trigger stages' I/O: flows from PostgreSQL, users' places from the journey table, facts, and
what a move emits (message-requests batches, progress counters, exit marks, timers).

``FlowBook`` loads every flow a worker needs (live journeys and all their versions still holding
users; active event-triggered campaigns) into a ``FlowIndex``, again whenever Redis
``flows:changed`` moves (the API bumps it) and every ``journey_reload_s`` anyway.

``Advancer`` is agents/advance_journeys.py's work: for each record of ``journey-signals`` (events,
due timers) or ``delivery-events`` (opens and clicks of a journey's messages) it reads the users'
places from the table, lets pipeline/journeys/engine.py decide, writes the places back and keeps
what the moves emit in ``Pending`` until ``flush``: one message-requests record per (campaign,
step, partition), the counters in one Redis round trip, then the records it came from are
acknowledged. A crash before that replays them; the engine recognises a replayed event (its id is
in the member's ``seen``), and a replayed send has the same message id (step "<node>@<entry tag>"), which
the gate's dedup and the senders' ledger keep to one message.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import orjson
import structlog
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from config import Settings
from pipeline.campaign_state import load_campaign
from pipeline.explode import assign_variants
from pipeline.journeys import engine
from pipeline.journeys.engine import NODE, WAKE, Facts, Flow, NeedFacts, Outcome
from pipeline.journeys.flows import SEGMENT_TOPIC, FlowIndex, segment_event
from pipeline.journeys.model import DefinitionError, WaitForEvent, parse_journey, parse_rule
from pipeline.journeys.rules import Event, dedup_value, moment_of
from pipeline.journeys.timers import TimerIndex
from pipeline.launch_audience import AudienceError, WorkerAudience, resolve_members
from pipeline.partitioning import user_partitions
from pipeline.worker_clients import WorkerClients
from schemas.encoding import from_json
from schemas.journeys import JourneySignal
from schemas.keys import (
    FLOWS_CHANGED, TEST_CLOCK, flow_entries_key, flow_exit_key, flow_progress_key, flow_segment_key,
)
from schemas.topics import JOURNEY_SIGNALS, MESSAGE_REQUESTS

log = structlog.get_logger("herald.journeys")

EXIT_MARK_TTL_S = 8 * 24 * 3600  # longer than any topic a queued message can wait in
SEGMENT_CACHE_S = 5.0
WAKE_CHUNK = 5000  # users per wake record
EXITS_THAT_DROP = ("goal", "stopped")  # a user who left this way gets nothing more that was queued


# ── Time and flows ────────────────────────────────────────────────────────────


class FlowClock:
    """The flows' clock: the wall clock, run ahead by Redis ``test:clock:offset_s`` on test workers.

    A test worker reads the offset at every call. It used to keep it for 0.1 s, and the timers' tick
    (every 0.25 s) read it just before a test moved the clock: an event that reached advance_journeys
    within that 0.1 s was decided on the old clock (a re-entry window seen as still running, in CI)."""

    def __init__(self, settings: Settings, clients: WorkerClients) -> None:
        self.enabled = settings.test_clock
        self.clients = clients

    async def now(self) -> float:
        if not self.enabled:
            return time.time()
        raw = await self.clients.redis().get(TEST_CLOCK)
        return time.time() + (float(raw) if raw else 0.0)


class FlowBook:
    def __init__(self, settings: Settings, clients: WorkerClients) -> None:
        self.settings = settings
        self.clients = clients
        self.index = FlowIndex()
        self.stamp: bytes | None = None
        self.loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> FlowIndex:
        """The index, reloaded first if the API changed a flow or it is ``journey_reload_s`` old."""
        stamp = await self.clients.redis().get(FLOWS_CHANGED)
        if stamp != self.stamp or time.monotonic() - self.loaded_at > self.settings.journey_reload_s:
            async with self._lock:
                if stamp != self.stamp or time.monotonic() - self.loaded_at > self.settings.journey_reload_s:
                    self.index = await load_flows(await self.clients.postgres())
                    self.stamp, self.loaded_at = stamp, time.monotonic()
        return self.index


async def load_flows(pool: asyncpg.Pool) -> FlowIndex:
    flows: list[Flow] = []
    current: dict[str, int] = {}
    stopped: list[str] = []
    rows = await pool.fetch(
        "SELECT j.journey_id, j.status, j.live_version, v.version, v.definition, v.step_campaigns"
        " FROM journeys j JOIN journey_versions v USING (journey_id) WHERE j.status IN ('live', 'stopped')")
    for r in rows:
        key = f"j{r['journey_id']}"
        try:
            journey = parse_journey(from_json(r["definition"]))
        except DefinitionError as exc:
            log.error("stored journey version no longer parses; skipped", flow=key, version=r["version"], error=str(exc))
            continue
        steps = {node: int(cid) for node, cid in (from_json(r["step_campaigns"]) or {}).items()}
        live = r["status"] == "live" and r["version"] == r["live_version"]
        flows.append(Flow(key, r["version"], journey, steps, live=live))
        if live:
            current[key] = r["version"]
        if r["status"] == "stopped":
            stopped.append(key)
    rows = await pool.fetch(
        "SELECT campaign_id, status, trigger, segment_id FROM campaigns"
        " WHERE type = 'triggered' AND trigger ? 'event' AND status IN ('active', 'paused')")
    for r in rows:
        raw = from_json(r["trigger"]) or {}
        try:
            rule = parse_rule({k: v for k, v in raw.items() if k != "segment_id"}, "trigger")
        except DefinitionError as exc:
            log.error("stored trigger no longer parses; skipped", campaign_id=r["campaign_id"], error=str(exc))
            continue
        if r["segment_id"] is not None:
            rule = type(rule)(**{**rule.__dict__, "segment_id": r["segment_id"]})
        flow = engine.campaign_flow(r["campaign_id"], 1, rule, live=r["status"] == "active")
        flows.append(flow)
        current[flow.key] = 1
    return FlowIndex.build(flows, current, stopped)


def packed(state: Mapping[str, list]) -> bytes:
    """A user's places as the table keeps them: JSON in an exact-size bytes object. orjson's own result keeps
    the ~4 KB buffer it was written into (measured: 4,098 bytes traced per 60-byte result), which a million
    parked users would hold for as long as they wait; the copy is the ~100 bytes it says."""
    return bytes(memoryview(orjson.dumps(state)))


def _token(text: str) -> str:
    """A dedup value or event id as the member keeps it: 40 bits of its hash (a user's few recent entries
    are told apart; the state stays small)."""
    return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()


def _epoch(raw: object) -> float | None:
    moment = moment_of(raw)
    return None if moment is None else moment.timestamp()


# ── Facts ─────────────────────────────────────────────────────────────────────


class FactSource:
    """A user's profile (PostgreSQL) and segment memberships (members cached ``SEGMENT_CACHE_S``)."""

    def __init__(self, clients: WorkerClients, audience: WorkerAudience) -> None:
        self.clients = clients
        self.audience = audience
        self._members: dict[int, tuple[float, np.ndarray]] = {}

    async def fetch(self, need: NeedFacts, uid: int, facts: Facts) -> None:
        if need.profile:
            facts.profile = await self.profile(uid)
        if need.segment is not None:
            facts.segments = {**facts.segments, need.segment: await self.in_segment(need.segment, uid)}

    async def profile(self, uid: int) -> dict | None:
        row = await (await self.clients.postgres()).fetchrow(
            "SELECT timezone, language, country, created_at, attributes FROM users WHERE user_id = $1", uid)
        if row is None:
            return None
        return {"timezone": row["timezone"], "language": row["language"], "country": row["country"],
                "created_at": row["created_at"], "attributes": from_json(row["attributes"]) or {}}

    async def in_segment(self, segment_id: int, uid: int) -> bool:
        members = await self.members(segment_id)
        pos = int(np.searchsorted(members, uid))
        return pos < len(members) and int(members[pos]) == uid

    async def members(self, segment_id: int, fresh: bool = False) -> np.ndarray:
        """The segment's members, sorted (cached ``SEGMENT_CACHE_S`` unless ``fresh``)."""
        cached = self._members.get(segment_id)
        if fresh or cached is None or time.monotonic() - cached[0] > SEGMENT_CACHE_S:
            store = self.audience.store or await self.audience.current(timeout_s=30)
            try:
                async with (await self.clients.postgres()).acquire() as conn:
                    members = await resolve_members(conn, segment_id, store)
            except AudienceError as exc:
                log.warning("segment cannot be resolved; nobody is in it", segment_id=segment_id, error=str(exc))
                members = np.empty(0, dtype=np.int64)
            cached = self._members[segment_id] = (time.monotonic(), members)
        return cached[1]


# ── What moves emit ───────────────────────────────────────────────────────────


@dataclass
class Pending:
    """Outputs of the records handled since the last flush, and those records' acknowledgements."""

    sends: dict[tuple[int, str, str | None, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter = field(default_factory=Counter)  # (flow, field) → delta
    exits: dict[tuple[str, int], int] = field(default_factory=dict)  # (flow, user) → entry tag
    acks: list[Callable[[], None]] = field(default_factory=list)
    first_at: float | None = None

    def __bool__(self) -> bool:
        return bool(self.sends or self.counts or self.exits or self.acks)

    def take_back(self, earlier: Pending) -> None:
        """Put an interrupted flush's outputs back in front of these (they are emitted with the next flush)."""
        for key, users in earlier.sends.items():
            self.sends[key] = users + self.sends.get(key, [])
        self.counts.update(earlier.counts)
        self.exits = {**earlier.exits, **self.exits}
        self.acks = earlier.acks + self.acks
        if earlier.first_at is not None:
            self.first_at = earlier.first_at if self.first_at is None else min(self.first_at, earlier.first_at)


def outcome_counts(flow: str, outcome: Outcome, timed_out: bool) -> Iterable[tuple[tuple[str, str], int]]:
    """The progress counters a move changes (pure)."""
    if outcome.entered:
        yield (flow, "entered"), 1
    if outcome.before != outcome.node:
        if outcome.before is not None:
            yield (flow, f"at:{outcome.before}"), -1
        if outcome.node is not None:
            yield (flow, f"at:{outcome.node}"), 1
    if outcome.exit is not None:
        yield (flow, f"exited:{outcome.exit}"), 1
    if outcome.converted:
        yield (flow, "converted"), 1
    if timed_out:
        yield (flow, "timed_out"), 1


class Advancer:
    def __init__(self, settings: Settings, clients: WorkerClients, audience: WorkerAudience,
                 table: MutableMapping[str, bytes], owned: Callable[[int], bool] = lambda p: True) -> None:
        self.settings = settings
        self.clients = clients
        self.table = table
        self.owned = owned
        self.clock = FlowClock(settings, clients)
        self.book = FlowBook(settings, clients)
        self.facts = FactSource(clients, audience)
        self.timers = TimerIndex()
        self.pending = Pending()
        self.waiting = asyncio.Event()  # set when handled records wait for a flush
        self._flushing = asyncio.Lock()

    # ── records in ──

    async def on_record(self, topic: str, partition: int, raw: bytes) -> None:
        """Handle one input record (its acknowledgement is the caller's, after ``flush``)."""
        if topic == JOURNEY_SIGNALS.name:
            signal = JourneySignal.model_validate_json(raw)
            if signal.kind == "wake":
                await self._wake(partition, signal.users)
            else:
                await self._events(partition, signal.topic or "user-events", signal)
        elif b'"opened"' in raw or b'"clicked"' in raw:
            await self._engagement(partition, orjson.loads(raw).get("events") or [])
        if self.pending.first_at is None:
            self.pending.first_at = time.monotonic()
            self.waiting.set()

    async def _events(self, partition: int, topic: str, signal: JourneySignal) -> None:
        index, now = await self.book.refresh(), await self.clock.now()
        for e in signal.events:
            event = Event(e.u, e.n, e.t, e.p, e.id)
            await self._move(partition, e.u, now, lambda state, facts: self._on_event(index, topic, event, state,
                                                                                     facts, now))

    def _on_event(self, index: FlowIndex, topic: str, event: Event, state: Mapping[str, list], facts: Facts,
                  now: float) -> list[tuple[str, Outcome | str, bool]]:
        out: list[tuple[str, Outcome | str, bool]] = []
        for key in index.listening(topic, event.name) & state.keys():
            member = state[key]
            flow = index.version(key, member[0])
            if member[NODE] is None or flow is None:
                continue
            moved = engine.leave(member, "stopped") if key in index.stopped else \
                engine.on_event(flow, member, event.user_id, event, now, facts)
            if moved is not None:
                out.append((key, moved, False))
        done = {k for k, _, _ in out}
        for flow in index.entering(topic, event, now):
            prev = state.get(flow.key)
            if flow.key in done:
                prev = next(o.member for k, o, _ in out if k == flow.key and isinstance(o, Outcome))
            dedup = dedup_value(flow.rule, event)
            seen = ([_token(f"d:{dedup}")] if dedup is not None else []) + [_token(f"e:{event.event_id}")]
            why = engine.admit(flow, prev, seen, now, facts)
            out.append((flow.key, why if why else engine.start(flow, prev, event.user_id, seen, now, facts, event.at),
                        False))
        return out

    async def _wake(self, partition: int, users: list[int]) -> None:
        index, now = await self.book.refresh(), await self.clock.now()
        for uid in users:
            await self._move(partition, uid, now, lambda state, facts, uid=uid: self._on_wake(index, uid, state, facts,
                                                                                              now))

    def _on_wake(self, index: FlowIndex, uid: int, state: Mapping[str, list], facts: Facts, now: float
                 ) -> list[tuple[str, Outcome | str, bool]]:
        out: list[tuple[str, Outcome | str, bool]] = []
        for key, member in state.items():
            if member[NODE] is None or member[WAKE] is None or member[WAKE] > now:
                continue
            flow = index.version(key, member[0])
            if flow is None:  # the flow was deleted: the user leaves it, and its timer with it
                moved = engine.leave(member, "gone") if key not in index.versions else None
                if moved is not None:
                    out.append((key, moved, False))
                continue
            if key in index.stopped:
                moved = engine.leave(member, "stopped")
                timed_out = False
            else:
                moved = engine.on_wake(flow, member, uid, now, facts)
                timed_out = isinstance(flow.journey.nodes.get(member[NODE]), WaitForEvent)
            if moved is not None:
                out.append((key, moved, timed_out))
        return out

    async def _engagement(self, partition: int, events: list[dict]) -> None:
        index = await self.book.refresh()
        if not index.steps:
            return
        now = await self.clock.now()
        for ev in events:
            if ev.get("status") not in ("opened", "clicked") or ev.get("machine"):
                continue  # a machine open (a proxy's or a scanner's prefetch) is not the person opening
            found = index.step_of(ev.get("campaign_id"))
            step = str(ev.get("step") or "")
            node, tag = step.rpartition("@")[0], engine.step_tag(step)
            if found is None or node != found[1] or tag is None:
                continue
            key, kind = found[0], ev["status"]
            uid, at = int(ev["user_id"]), _epoch(ev.get("at"))

            def decide(state, facts, key=key, node=node, tag=tag, kind=kind, uid=uid, at=at):
                member = state.get(key)
                if member is None or engine.entry_tag(member) != tag or member[NODE] is None:
                    return []
                flow = index.version(key, member[0])
                moved = engine.on_engagement(flow, member, uid, node, kind, now, facts, at) if flow else None
                return [(key, moved, False)] if moved is not None else []
            await self._move(partition, uid, now, decide)

    # ── one user's move ──

    async def _move(self, partition: int, uid: int, now: float,
                    decide: Callable[[Mapping[str, list], Facts], list[tuple[str, Outcome | str, bool]]]) -> None:
        """Decide with the user's places (fetching facts the engine asks for), then apply: entry
        limits, the table, and what the moves emit."""
        raw = self.table.get(str(uid))
        state = orjson.loads(raw) if raw else {}
        facts = Facts()
        for _ in range(4):
            try:
                moves = decide(state, facts)
                break
            except NeedFacts as need:
                await self.facts.fetch(need, uid, facts)
        else:
            raise RuntimeError(f"user {uid}: the engine kept asking for facts")
        if not moves:
            return
        new_state = dict(state)
        index = self.book.index
        for key, moved, timed_out in moves:
            if isinstance(moved, str):
                self.pending.counts[(key, f"refused:{moved}")] += 1
                continue
            if moved.entered:
                flow = index.current.get(key)
                if flow is not None and flow.rule.limit is not None and not await self._within_limit(key, flow.rule.limit):
                    self.pending.counts[(key, "refused:limit")] += 1
                    continue
            new_state[key] = moved.member
            for counter, delta in outcome_counts(key, moved, timed_out):
                self.pending.counts[counter] += delta
            for send in moved.sends:
                self.pending.sends[(send.campaign_id, send.step, send.channel, partition)].append(uid)
            if moved.exit in EXITS_THAT_DROP:
                self.pending.exits[(key, uid)] = engine.entry_tag(moved.member)
            if moved.wake_at is not None:
                self.timers.add(partition, uid, moved.wake_at)
        if new_state != state:
            self.table[str(uid)] = packed(new_state)

    async def _within_limit(self, key: str, limit: int) -> bool:
        return await self.clients.redis().incr(flow_entries_key(key)) <= limit

    # ── out ──

    async def flush(self) -> None:
        """Emit what the handled records decided, then acknowledge them. Whatever fails is retried (a record
        is never acknowledged before what it decided is out); a flush interrupted by cancellation puts its
        outputs back for the next one."""
        async with self._flushing:
            pending, self.pending = self.pending, Pending()
            if not pending:
                return
            delay = 0.2
            try:
                while True:
                    try:
                        await self._emit(pending)
                        break
                    except (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, RedisError,
                            KafkaError) as exc:
                        log.warning("journeys: emitting failed; retrying", error=repr(exc), delay_s=delay)
                    except Exception:  # not a store's hiccup: say so loudly, and still never drop a decision
                        log.exception("journeys: emitting failed unexpectedly; retrying", delay_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            except asyncio.CancelledError:
                self.pending.take_back(pending)
                raise
            for ack in pending.acks:
                ack()

    async def _emit(self, pending: Pending) -> None:
        """Emit ``pending``, forgetting each part once it is out (a retry emits only the rest)."""
        redis = self.clients.redis()
        if pending.exits or pending.counts:
            async with redis.pipeline(transaction=False) as pipe:
                for (key, uid), k in pending.exits.items():
                    pipe.set(flow_exit_key(key, uid), k, ex=EXIT_MARK_TTL_S)
                for (key, name), delta in pending.counts.items():
                    if delta:
                        pipe.hincrby(flow_progress_key(key), name, delta)
                await pipe.execute()
            pending.exits, pending.counts = {}, Counter()
        if not pending.sends:
            return
        pool = await self.clients.postgres()
        uids = sorted({u for users in pending.sends.values() for u in users})
        languages = dict(await pool.fetch("SELECT user_id, language FROM users WHERE user_id = ANY($1::bigint[])", uids))
        producer = await self.clients.producer()
        futures = []
        now_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        sent = []
        for group, users in pending.sends.items():
            campaign_id, step, channel, partition = group
            campaign = await load_campaign(pool, campaign_id, self.settings)
            if campaign is None:
                log.error("journeys: a send's campaign is gone; its messages are dropped", campaign_id=campaign_id)
                sent.append(group)
                continue
            users = list(dict.fromkeys(users))
            variants = assign_variants(campaign_id, np.asarray(users, dtype=np.int64), campaign.variants)
            recipients = [{"user_id": u, "variant": None if variants is None else str(variants[i]),
                           "language": languages.get(u) or "en"} for i, u in enumerate(users)]
            batch = {"batch_id": f"flow:{campaign_id}:{step}:{partition}:{users[0]}:{len(users)}",
                     "campaign_id": campaign_id, "launch_id": None, "step": step, "channel": channel,
                     "partition": partition, "category": campaign.category, "transactional": campaign.transactional,
                     "recipients": recipients, "launched_at": now_iso, "attempt": 0}
            futures.append((group, await producer.send(MESSAGE_REQUESTS.name, orjson.dumps(batch),
                                                       key=batch["batch_id"].encode(), partition=partition)))
        for group in sent:
            del pending.sends[group]
        for group, future in futures:
            await future
            del pending.sends[group]

    # ── segment entries ──

    async def watch_segments(self) -> int:
        """Enter the users who joined a segment-entry flow's dynamic segment since the last look, in the
        partitions this worker owns: one entry event each on journey-signals (the engine then applies the
        flow's re-entry policy, as for any entry). Members at a flow's first look are its baseline: they
        were in the segment before the journey went live. Returns how many entry events were sent."""
        index = await self.book.refresh()
        if not index.segment_entries:
            return 0
        redis, producer = self.clients.redis(), await self.clients.producer()
        now, sent = await self.clock.now(), 0
        for flow in index.segment_entries:
            assert flow.rule.segment_id is not None
            members = await self.facts.members(flow.rule.segment_id, fresh=True)
            parts = user_partitions(members, JOURNEY_SIGNALS.partitions)
            for partition in range(JOURNEY_SIGNALS.partitions):
                if not self.owned(partition):
                    continue
                current = members[parts == partition].astype("<i8")
                key = flow_segment_key(flow.key, partition)
                before = await redis.get(key)
                if before is not None:
                    new = np.setdiff1d(current, np.frombuffer(before, dtype="<i8"), assume_unique=True).tolist()
                    for i in range(0, len(new), WAKE_CHUNK):
                        events = [{"u": u, "n": segment_event(flow.key), "t": now, "id": f"seg:{int(now)}:{u}", "p": {}}
                                  for u in new[i:i + WAKE_CHUNK]]
                        signal = {"kind": "events", "partition": partition, "topic": SEGMENT_TOPIC, "events": events}
                        await producer.send_and_wait(JOURNEY_SIGNALS.name, orjson.dumps(signal), key=b"segment",
                                                     partition=partition)
                    sent += len(new)
                await redis.set(key, current.tobytes())
        return sent

    # ── timers ──

    async def wake_due(self) -> int:
        """Send a ``JourneySignal`` wake record for every owned slot whose time has come; returns how many.
        A slot whose record could not be sent goes back in the index (the next tick tries again); a slot
        of a partition this worker no longer owns is its new owner's, who rebuilt it from the table."""
        slots = [slot for slot in self.timers.pop_due(await self.clock.now()) if self.owned(slot[0])]
        producer, done = await self.clients.producer(), 0
        try:
            for partition, second, users in slots:
                for i in range(0, len(users), WAKE_CHUNK):
                    signal = {"kind": "wake", "partition": partition, "users": users[i:i + WAKE_CHUNK], "due": second}
                    await producer.send_and_wait(JOURNEY_SIGNALS.name, orjson.dumps(signal), key=b"wake",
                                                 partition=partition)
                done += 1
        finally:
            for partition, second, users in slots[done:]:
                for uid in users:
                    self.timers.add(partition, uid, second)
        return done

    def rebuild_timers(self, partitions: Iterable[int]) -> int:
        """The index from the table (after a recovery): every parked member of these partitions."""
        keep = set(partitions)
        self.timers.clear()
        uids, dues = [], []
        for key, raw in self.table.items():
            wakes = [m[WAKE] for m in (orjson.loads(raw) if raw else {}).values()
                     if m[NODE] is not None and m[WAKE] is not None]
            if wakes:
                uids.append(int(key))
                dues.append(min(wakes))
        if uids:
            parts = user_partitions(np.asarray(uids, dtype=np.int64), JOURNEY_SIGNALS.partitions)
            for uid, due, partition in zip(uids, dues, parts.tolist()):
                if partition in keep:
                    self.timers.add(partition, uid, due)
        return len(self.timers)

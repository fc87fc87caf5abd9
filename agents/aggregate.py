"""aggregate: delivery-events → live counters in Redis, Cassandra ``message_log``, campaign completion.

Input: ``delivery-events`` (``DeliveryEventBatch``, one record per stage batch, partition of its users).
Output: ``dead-letters`` for records that fail validation.
Side effects:
- Redis ``campaign:{id}:metrics`` (+ ``:<channel>`` and ``:<channel>:<variant>``): one Lua call per
  consumed batch folds every event, counting each (message, status) once ever (``pipeline.metrics``),
  so replays of this consumer or of any upstream stage never double count.
- Cassandra ``message_log``: one row per message and status it reached (sent, delivered, bounced, failed,
  suppressed, cancelled, opened, clicked, ...; not the transient queued, held and deferred), unlogged
  batches per (campaign, day, shard); a replay rewrites the same rows. A consumer group of its own, so a slow Cassandra delays the log,
  never the live counters.
- Completion: when ``accounted`` (messages with an outcome) reaches ``campaign:{id}:expected`` while the
  campaign is active, PostgreSQL campaigns.status becomes ``completed`` (with an audit row by "herald"),
  then Redis ``campaign:{id}:status``. Checked after every fold and swept every second, because explode
  may write ``expected`` after the last event was folded.

Both consumers are bulk consumers (``pipeline.batch_consumer``): a Faust stream costs ~200 µs a record, and the
fold wants many stage batches per Redis call.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime, timezone

import orjson
import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from cassandra.query import BatchStatement, BatchType

from agents._io import send_dead_letters
from pipeline import metrics
from pipeline.app import app, clients, settings
from schemas.topics import DELIVERY_EVENTS
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, decode_batch
from pipeline.worker_clients import WorkerClients
from pipeline.sinks import until_stored
from pipeline.stores.cassandra import run_async
from schemas.messages import DeliveryEvent, DeliveryEventBatch

log = structlog.get_logger()
resources = clients
_redis: aioredis.Redis | None = None

# ARGV: ttl, G, G × (main key, channel key, variant key, reason field, campaign id),
#       M, M × (seen key, message id bytes, mask, group index, cost, revenue).
# The rule is pipeline.metrics.outcome; keep the two in step.
FOLD_LUA = """
local band, bor, bnot, lshift = bit.band, bit.bor, bit.bnot, bit.lshift
local OUTCOME, FIRSTONLY, NS = %(outcome)d, %(first_only)d, %(n_statuses)d
local SENT, SUPPRESSED, CONVERTED, DUPLICATE = %(sent)d, %(suppressed)d, %(converted)d, %(duplicate)d
local ttl = tonumber(ARGV[1])
local ng = tonumber(ARGV[2])
local i = 3
local groups = {}
for g = 1, ng do
  groups[g] = {keys = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}, reason = ARGV[i + 3], campaign = ARGV[i + 4],
               counts = {}, spend = 0, revenue = 0, accounted = 0}
  i = i + 5
end
local nm = tonumber(ARGV[i])
i = i + 1
local touched = {}
for _ = 1, nm do
  local key, field, new, g = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), groups[tonumber(ARGV[i + 3])]
  local cost, rev = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  i = i + 6
  local v = redis.call('HGET', key, field)
  local old = v and tonumber(v) or 0
  local fresh = band(new, bnot(old))
  if fresh ~= 0 then
    redis.call('HSET', key, field, bor(old, new))
    touched[key] = true
    if band(old, OUTCOME) == 0 and band(fresh, OUTCOME) ~= 0 then g.accounted = g.accounted + 1 end
    local taken = band(old, OUTCOME) ~= 0 or band(band(bor(old, new), OUTCOME), bnot(FIRSTONLY)) ~= 0
    for s = 0, NS - 1 do
      local b = lshift(1, s)
      if band(fresh, b) ~= 0 then
        local count = true
        if band(FIRSTONLY, b) ~= 0 then
          if taken then count = false else taken = true end
        end
        if count then
          g.counts[s] = (g.counts[s] or 0) + 1
          if b == SENT then g.spend = g.spend + cost end
          if b == CONVERTED then g.revenue = g.revenue + rev end
        end
      end
    end
  end
end
local names = {%(names)s}
for _, g in ipairs(groups) do
  for _, k in ipairs(g.keys) do
    for s, c in pairs(g.counts) do
      local b = lshift(1, s)
      if b == DUPLICATE then
        redis.call('HINCRBY', k, 'suppressed', c)
        redis.call('HINCRBY', k, 'suppressed:duplicate', c)
      else
        redis.call('HINCRBY', k, names[s + 1], c)
        if b == SUPPRESSED then redis.call('HINCRBY', k, g.reason, c) end
      end
    end
    if g.spend ~= 0 then redis.call('HINCRBYFLOAT', k, 'budget_spent', string.format('%%.17g', g.spend)) end
    if g.revenue ~= 0 then redis.call('HINCRBYFLOAT', k, 'revenue', string.format('%%.17g', g.revenue)) end
    if g.accounted ~= 0 then redis.call('HINCRBY', k, '%(accounted)s', g.accounted) end
  end
  redis.call('SADD', '%(open)s', g.campaign)
end
for key in pairs(touched) do redis.call('EXPIRE', key, ttl) end
return nm
""" % {
    "outcome": metrics.OUTCOME_MASK, "first_only": metrics.FIRST_ONLY_MASK, "n_statuses": len(metrics.STATUSES),
    "sent": metrics.BIT["sent"], "suppressed": metrics.BIT["suppressed"], "converted": metrics.BIT["converted"],
    "duplicate": metrics.BIT[metrics.DUPLICATE],
    "names": ", ".join(f"'{s}'" for s in metrics.STATUSES), "accounted": metrics.ACCOUNTED, "open": metrics.OPEN_CAMPAIGNS,
}


def fold_args(deltas: list[metrics.MessageDelta], ttl: int = metrics.SEEN_TTL_S) -> list:
    """The fold script's ARGV for a batch of per-message deltas."""
    groups: dict[metrics.Group, int] = {}
    for d in deltas:
        groups.setdefault(d.group, len(groups) + 1)
    args: list = [ttl, len(groups)]
    for g in groups:
        args += [*g.keys, metrics.reason_field(g.reason), g.campaign_id]
    args.append(len(deltas))
    for d in deltas:
        args += [metrics.seen_key(d.group.campaign_id, d.message_id), d.message_id.bytes, d.mask, groups[d.group],
                 repr(d.cost), repr(d.revenue)]
    return args


class Folder:
    """Applies ``pipeline.metrics`` to Redis: one script call per batch, then the completion check."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.script = redis.register_script(FOLD_LUA)

    async def fold(self, events: list[DeliveryEvent]) -> set[int]:
        deltas = metrics.collapse(events)
        if deltas:
            await until_stored(lambda: self.script(args=fold_args(deltas)), "aggregate.fold")
        return {d.group.campaign_id for d in deltas}


class Completion:
    """Marks campaigns completed: PostgreSQL first (the source of truth, only from active), then Redis."""

    def __init__(self, redis: aioredis.Redis, resources: WorkerClients) -> None:
        self.redis = redis
        self.resources = resources

    async def check(self, campaign_ids: set[int] | list[int]) -> list[int]:
        """Complete those of ``campaign_ids`` that are due; forget the ones that ended. Returns the completed."""
        ids = sorted(campaign_ids)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.get(metrics.expected_key(cid))
                pipe.hget(metrics.metrics_key(cid), metrics.ACCOUNTED)
                pipe.get(metrics.status_key(cid))
            answers = await pipe.execute()
        done, ended = [], []
        for n, cid in enumerate(ids):
            expected, accounted, status = answers[3 * n: 3 * n + 3]
            status = status.decode() if status else None
            if status in ("completed", "cancelled"):
                ended.append(cid)
            elif metrics.is_complete(int(expected) if expected else None, int(accounted or 0), status):
                final = await self._complete(cid)
                if final in ("completed", "cancelled", None):  # None: no such campaign (any more)
                    ended.append(cid)
                if final == "completed":
                    done.append(cid)
        if ended:
            await self.redis.srem(metrics.OPEN_CAMPAIGNS, *ended)
        return done

    async def _complete(self, campaign_id: int) -> str | None:
        """Complete the campaign in PostgreSQL if it is active; returns its status there afterwards
        (None if PostgreSQL has no such campaign: a draft's are deleted, and so are benches')."""
        pool = await self.resources.postgres()
        now = datetime.now(timezone.utc)
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE campaigns SET status = 'completed', completed_at = $2, updated_at = $2,"
                " version = version + 1 WHERE campaign_id = $1 AND status = 'active'"
                " RETURNING status, version, completed_at", campaign_id, now)
            if row is None:
                status = await conn.fetchval("SELECT status FROM campaigns WHERE campaign_id = $1", campaign_id)
            else:
                status = "completed"
                await _audit(conn, campaign_id, row)
        if status == "completed":
            # Only an active (or unknown) Redis status becomes completed: a cancel that raced us wins.
            await self.redis.eval(
                "local s = redis.call('GET', KEYS[1]) if s == false or s == 'active' then"
                " redis.call('SET', KEYS[1], 'completed') end return 1", 1, metrics.status_key(campaign_id))
            if row is not None:
                log.info("campaign completed", campaign_id=campaign_id)
        return status

    async def sweep(self) -> list[int]:
        members = await self.redis.smembers(metrics.OPEN_CAMPAIGNS)
        return await self.check({int(x) for x in members})


async def _audit(conn, campaign_id: int, row) -> None:
    from api import audit  # the API's audit writer; imported late so the worker starts without it loaded

    await audit.record(conn, None, "campaign.completed", "campaign", campaign_id,
                       {"campaign_id": campaign_id, "status": "active"},
                       {"campaign_id": campaign_id, "status": "completed", "version": row["version"],
                        "completed_at": row["completed_at"].isoformat()})


class MessageLog:
    """Writes ``message_log``: one unlogged batch per (campaign, day, shard) partition, many in flight."""

    _INSERT = (
        "INSERT INTO {ks}.message_log (campaign_id, day, shard, sent_at, message_id, user_id, channel, variant,"
        " status, delivered_at, error_message, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    ROWS_PER_BATCH = 100  # ~20 KB: above Cassandra's 5 KiB warning, well under its 50 KiB limit (raised in stack.py)

    def __init__(self, session, keyspace: str, in_flight: int = 64) -> None:
        self.session = session
        self.insert = session.prepare(self._INSERT.format(ks=keyspace))
        self.in_flight = asyncio.Semaphore(in_flight)

    async def write(self, events: list[DeliveryEvent]) -> int:
        partitions: dict[tuple, list[DeliveryEvent]] = defaultdict(list)
        for event in events:
            partitions[metrics.log_partition(event)].append(event)

        async def one(group: list[DeliveryEvent]) -> None:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for event in group:
                batch.add(self.insert, metrics.log_row(event))
            async with self.in_flight:
                await run_async(self.session, batch)

        chunks = [g[i:i + self.ROWS_PER_BATCH] for g in partitions.values()
                  for i in range(0, len(g), self.ROWS_PER_BATCH)]
        await asyncio.gather(*(one(c) for c in chunks))
        return len(events)


# ---------------------------------------------------------------- the worker's tasks

_folder: Folder | None = None
_completion: Completion | None = None
_log: MessageLog | None = None


async def _redis_client() -> aioredis.Redis:
    global _redis
    if _redis is None:
        _redis = aioredis.from_url(settings.redis_url)
    return _redis


async def _parts() -> tuple[Folder, Completion]:
    global _folder, _completion
    if _folder is None or _completion is None:
        r = await _redis_client()
        _folder, _completion = Folder(r), Completion(r, resources)
    return _folder, _completion


def _events(raws: list[RawRecord], stage: str, dead: list | None = None) -> list[DeliveryEvent]:
    decoded = decode_batch(raws, DeliveryEventBatch, stage=stage)
    if dead is not None:
        dead += decoded.dead
    return [e for batch in decoded.records for e in batch.events]


def _logged_events(raws: list[RawRecord]) -> list[DeliveryEvent]:
    """The events that get a message_log row, validated; the rest (queued, held, deferred: half
    of all events) are skipped after a plain JSON parse. A record that is not a DeliveryEventBatch
    is skipped here: the aggregate's own consumer dead-letters it."""
    out: list[DeliveryEvent] = []
    for raw in raws:
        try:
            events = orjson.loads(raw.value or b"")["events"]
            out += [DeliveryEvent.model_validate(e) for e in events if metrics.logged(e.get("status"))]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValidationError):
            continue
    return out


async def fold_batch(raws: list[RawRecord]) -> None:
    folder, completion = await _parts()
    dead: list = []
    touched = await folder.fold(_events(raws, "aggregate", dead))
    await send_dead_letters(dead)
    await completion.check(touched)


async def log_batch(raws: list[RawRecord]) -> None:
    global _log
    if _log is None:
        _log = MessageLog(await resources.cassandra(), settings.cassandra_keyspace)
    events = _logged_events(raws)
    if events:
        await until_stored(lambda: _log.write(events), "message_log")


@app.task
async def aggregate_metrics() -> None:
    await run_forever(settings, DELIVERY_EVENTS.name, "aggregate", fold_batch)


@app.task
async def log_messages() -> None:
    await run_forever(settings, DELIVERY_EVENTS.name, "message_log", log_batch)


@app.timer(interval=1.0)
async def complete_campaigns() -> None:
    _, completion = await _parts()
    try:
        await completion.sweep()
    except Exception:  # a down store: the next tick tries again
        log.exception("completion sweep failed")

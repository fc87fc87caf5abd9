"""The aggregate stage's store calls: the Redis fold, campaign completion, the Cassandra ``message_log``.

Redis keys (``schemas.keys``):
    campaign:{id}:seen:{bucket}        r/w   message id → mask of the statuses counted (``pipeline.metrics``)
    campaign:{id}:metrics[:ch[:var]]   incr  live counters
    campaign:{id}:expected | :status   read  what completes a campaign; status set to completed
    aggregate:open                     r/w   campaigns whose completion is still to be decided

PostgreSQL: ``campaigns.status`` becomes completed (from active only; a recurring campaign with
another occurrence goes back to scheduled), with its audit row (``pipeline.audit``), and the run's
``campaign_runs`` row is completed with its counts (``pipeline.schedule_io.finish_run``). Cassandra: ``message_log`` rows, one unlogged batch per partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from cassandra.query import BatchStatement, BatchType

from pipeline import aggregate as decide
from pipeline import erase
from pipeline import erase_io
from pipeline import metrics
from pipeline.sinks import until_stored
from pipeline.stores.cassandra import run_async
from pipeline.schedule_io import finish_run
from pipeline.worker_clients import WorkerClients
from schemas.keys import DIRTY_HOURS, OPEN_CAMPAIGNS, expected_key, hour_metrics_key, metrics_key, status_key
from schemas.messages import DeliveryEvent

log = structlog.get_logger()

# ARGV: ttl, G, G × (main key, channel key, variant key, reason field, campaign id),
#       S, S × (minute key, hour key, field prefix, dashboard minute key, dashboard day key, dashboard top key,
#               channel prefix, campaign id, "<campaign id>:<hour>"): the time-series slots (a campaign, channel and variant in a minute),
#       M, M × (seen key, message id bytes, mask, group index, cost, revenue, slot index).
# The rule is pipeline.metrics.outcome; keep the two in step. ARGV is built by pipeline.aggregate.fold_args.
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
local ns = tonumber(ARGV[i])
i = i + 1
local slots = {}
for s = 1, ns do
  slots[s] = {keys = {ARGV[i], ARGV[i + 1]}, prefix = ARGV[i + 2], dash = {ARGV[i + 3], ARGV[i + 4]},
              top = ARGV[i + 5], channel = ARGV[i + 6], campaign = ARGV[i + 7], hour = ARGV[i + 8], counts = {},
              revenue = 0, spend = 0}
  i = i + 9
end
local nm = tonumber(ARGV[i])
i = i + 1
local touched = {}
for _ = 1, nm do
  local key, field, new, g = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), groups[tonumber(ARGV[i + 3])]
  local cost, rev, slot = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), slots[tonumber(ARGV[i + 6])]
  i = i + 7
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
          slot.counts[s] = (slot.counts[s] or 0) + 1
          if b == CONVERTED then slot.revenue = slot.revenue + rev end
          if b == SENT then slot.spend = slot.spend + cost end
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
local function add_counts(k, prefix, counts)
  for s, c in pairs(counts) do
    local name = names[s + 1]
    if lshift(1, s) == DUPLICATE then name = 'suppressed' end
    redis.call('HINCRBY', k, prefix .. name, c)
  end
end
for _, slot in ipairs(slots) do
  if next(slot.counts) ~= nil then
    for _, k in ipairs(slot.keys) do
      add_counts(k, slot.prefix, slot.counts)
      if slot.revenue ~= 0 then
        redis.call('HINCRBYFLOAT', k, slot.prefix .. 'revenue', string.format('%%.17g', slot.revenue))
      end
      if slot.spend ~= 0 then
        redis.call('HINCRBYFLOAT', k, slot.prefix .. 'budget_spent', string.format('%%.17g', slot.spend))
      end
    end
    redis.call('EXPIRE', slot.keys[1], %(minute_ttl)d)
    redis.call('EXPIRE', slot.keys[2], %(hour_ttl)d)
    redis.call('SADD', '%(dirty)s', slot.hour)
    for _, k in ipairs(slot.dash) do
      add_counts(k, slot.channel, slot.counts)
      redis.call('EXPIRE', k, %(dash_ttl)d)
    end
    local sent = slot.counts[%(sent_index)d]
    if sent then
      redis.call('ZINCRBY', slot.top, sent, slot.campaign)
      redis.call('EXPIRE', slot.top, %(dash_ttl)d)
    end
  end
end
for key in pairs(touched) do redis.call('EXPIRE', key, ttl) end
return nm
""" % {
    "outcome": metrics.OUTCOME_MASK, "first_only": metrics.FIRST_ONLY_MASK, "n_statuses": len(metrics.STATUSES),
    "sent": metrics.BIT["sent"], "suppressed": metrics.BIT["suppressed"], "converted": metrics.BIT["converted"],
    "duplicate": metrics.BIT[metrics.DUPLICATE],
    "names": ", ".join(f"'{s}'" for s in metrics.STATUSES),
    "minute_ttl": metrics.MINUTE_TTL_S, "hour_ttl": metrics.HOUR_TTL_S, "dash_ttl": metrics.DASHBOARD_TTL_S,
    "sent_index": metrics.STATUSES.index("sent"), "accounted": metrics.ACCOUNTED, "open": OPEN_CAMPAIGNS,
    "dirty": DIRTY_HOURS,
}


class Folder:
    """Applies ``pipeline.metrics`` to Redis: one script call per batch of events."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.script = redis.register_script(FOLD_LUA)

    async def fold(self, events: Iterable[DeliveryEvent]) -> set[int]:
        """Fold the events; returns the campaigns they touched."""
        deltas = metrics.collapse(events)
        if deltas:
            await until_stored(lambda: self.script(args=decide.fold_args(deltas)), "aggregate.fold")
        return {d.group.campaign_id for d in deltas}


# Only an active (or unknown) Redis status becomes completed: a cancel that raced us wins.
_COMPLETE = ("local s = redis.call('GET', KEYS[1]) if s == false or s == 'active' then"
             " redis.call('SET', KEYS[1], 'completed') end return 1")


class Completion:
    """Marks campaigns completed: PostgreSQL first (the source of truth, only from active), then Redis."""

    def __init__(self, redis: aioredis.Redis, clients: WorkerClients) -> None:
        self.redis = redis
        self.clients = clients

    async def check(self, campaign_ids: set[int] | list[int]) -> list[int]:
        """Complete those of ``campaign_ids`` that are due; forget the ones that ended. Returns the completed."""
        ids = sorted(campaign_ids)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.get(expected_key(cid))
                pipe.hget(metrics_key(cid), metrics.ACCOUNTED)
                pipe.get(status_key(cid))
            answers = await pipe.execute()
        done, ended = [], []
        for n, cid in enumerate(ids):
            expected, accounted, status = answers[3 * n: 3 * n + 3]
            verdict = decide.completion(int(expected) if expected else None, int(accounted or 0),
                                        status.decode() if status else None)
            if verdict == "ended":
                ended.append(cid)
            elif verdict == "complete":
                final = await self._complete(cid)
                if decide.forgotten_after_completing(final):
                    ended.append(cid)
                if final == "completed":
                    done.append(cid)
        if ended:
            await self.redis.srem(OPEN_CAMPAIGNS, *ended)
        return done

    async def _complete(self, campaign_id: int) -> str | None:
        """Complete the campaign in PostgreSQL if it is active; returns its status there afterwards
        (None if PostgreSQL has no such campaign: a draft's are deleted, and so are benches')."""
        pool = await self.clients.postgres()
        async with pool.acquire() as conn, conn.transaction():
            # The run's row with its counts, and the campaign completed, or back to scheduled when a
            # recurring campaign runs again (pipeline.schedule_io; only from active, or paused at its end).
            status = await finish_run(conn, self.redis, campaign_id, None)
        if status in decide.RUN_OVER:
            await self.redis.eval(_COMPLETE, 1, status_key(campaign_id))
            log.info("campaign run completed", campaign_id=campaign_id, status=status)
        return status

    async def sweep(self) -> list[int]:
        members = await self.redis.smembers(OPEN_CAMPAIGNS)
        return await self.check({int(x) for x in members})


def bound_batches(insert, chunks: list[list[tuple]]) -> list[BatchStatement]:
    """One unlogged batch of ``insert`` per chunk of rows (``decide.partition_chunks``: one partition each)."""
    out = []
    for rows in chunks:
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for row in rows:
            batch.add(insert, row)
        out.append(batch)
    return out


class MessageLog:
    """Writes ``message_log``: one unlogged batch per (campaign, day, shard) partition, many in flight."""

    _INSERT = (
        "INSERT INTO {ks}.message_log (campaign_id, day, shard, sent_at, message_id, user_id, channel, variant,"
        " status, delivered_at, error_message, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    # Beside each row, which (campaign, day) holds the user's rows (pipeline/erase.py finds them by it).
    _INDEX = "INSERT INTO {ks}.message_log_by_user (user_bucket, user_id, campaign_id, day) VALUES (?, ?, ?, ?)"
    ROWS_PER_BATCH = decide.ROWS_PER_LOG_BATCH

    def __init__(self, session, keyspace: str, in_flight: int = 64) -> None:
        self.session = session
        self.insert = session.prepare(self._INSERT.format(ks=keyspace))
        self.index = session.prepare(self._INDEX.format(ks=keyspace))
        self.delete_row = session.prepare(f"DELETE FROM {keyspace}.message_log WHERE campaign_id = ? AND day = ?"
                                          " AND shard = ? AND sent_at = ? AND message_id = ?")
        self.delete_index = session.prepare(f"DELETE FROM {keyspace}.message_log_by_user WHERE user_bucket = ?"
                                            " AND user_id = ?")
        self.in_flight = asyncio.Semaphore(in_flight)

    def statements(self, events: list[DeliveryEvent]) -> list[BatchStatement]:
        """The unlogged batches of the events' rows and their index rows, bound (the driver binds in Python:
        CPU-heavy)."""
        chunks = decide.log_batches(events, self.ROWS_PER_BATCH)
        index = erase.log_index_rows(row for chunk in chunks for row in chunk)
        return (bound_batches(self.insert, chunks)
                + bound_batches(self.index, decide.partition_chunks(index, 1, self.ROWS_PER_BATCH)))

    async def write(self, events: list[DeliveryEvent]) -> int:
        # Bound in a thread: binding 10,000 rows a second took ~45 % of a worker's event loop, and the live
        # counters' fold (2 %) waited behind it. In a thread, the loop keeps its turn (the GIL switches every 5 ms).
        batches = await asyncio.to_thread(self.statements, events)

        async def one(batch: BatchStatement) -> None:
            async with self.in_flight:
                await run_async(self.session, batch)

        await asyncio.gather(*(one(b) for b in batches))
        return len(events)

    async def delete(self, events: list[DeliveryEvent]) -> None:
        """Delete the rows ``write`` wrote for these events, and their users' index rows."""
        rows = [row for chunk in decide.log_batches(events, self.ROWS_PER_BATCH) for row in chunk]
        users = sorted({row[5] for row in rows})

        async def one(statement, values) -> None:
            async with self.in_flight:
                await run_async(self.session, statement, values)

        await asyncio.gather(*(one(self.delete_row, row[:5]) for row in rows),
                             *(one(self.delete_index, (erase.user_bucket(u), u)) for u in users))


class AggregateIO:
    """The aggregate's stores over the worker's shared clients, each part built on first use."""

    def __init__(self, clients: WorkerClients, keyspace: str) -> None:
        self.clients = clients
        self.keyspace = keyspace
        self._folder: Folder | None = None
        self._completion: Completion | None = None
        self._log: MessageLog | None = None
        self._hourly: HourlyMetrics | None = None
        self.erased = erase_io.ErasedCheck(clients)

    @property
    def hourly(self) -> HourlyMetrics:
        if self._hourly is None:
            self._hourly = HourlyMetrics(self.clients.redis(), self.clients, self.keyspace)
        return self._hourly

    @property
    def folder(self) -> Folder:
        if self._folder is None:
            self._folder = Folder(self.clients.redis())
        return self._folder

    @property
    def completion(self) -> Completion:
        if self._completion is None:
            self._completion = Completion(self.clients.redis(), self.clients)
        return self._completion

    async def message_log(self) -> MessageLog:
        if self._log is None:
            self._log = MessageLog(await self.clients.cassandra(), self.keyspace)
        return self._log

    async def write_log(self, values: list[bytes | None]) -> None:
        """Write the message_log rows of raw delivery-events values, waiting out a Cassandra that is down
        (``until_stored``). Parsing and binding run in a thread, off the worker's event loop."""
        events = await asyncio.to_thread(decide.logged_events, values)
        if events:
            message_log = await self.message_log()
            await until_stored(lambda: message_log.write(events), "message_log")
            # Erased meanwhile (pipeline/erase.py): the rows just written go again, by their own keys (the
            # erasure may have read and deleted the index before these rows landed). Checked after the write.
            gone = await self.erased.among(e.user_id for e in events)
            if gone:
                await until_stored(lambda: message_log.delete([e for e in events if e.user_id in gone]),
                                   "message_log.erase")


class HourlyMetrics:
    """Copies the hours whose counts changed (Redis ``DIRTY_HOURS``) to Cassandra ``campaign_metrics``: absolute
    values, so at least once is enough. An hour taken but not written goes back in the set."""

    INSERT = ("INSERT INTO {keyspace}.campaign_metrics (campaign_id, date, hour, channel, variant, metric, value)"
              " VALUES (?, ?, ?, ?, ?, ?, ?)")

    def __init__(self, redis: aioredis.Redis, clients: WorkerClients, keyspace: str, per_flush: int = 500) -> None:
        self.redis = redis
        self.clients = clients
        self.keyspace = keyspace
        self.per_flush = per_flush
        self._insert = None

    async def flush(self) -> int:
        """Copy up to ``per_flush`` changed hours; returns how many rows were written."""
        members = await self.redis.spop(DIRTY_HOURS, self.per_flush)
        if not members:
            return 0
        try:
            hours = [h for m in members if (h := decide.parse_hour_member(m)) is not None]
            pipe = self.redis.pipeline(transaction=False)
            for campaign_id, hour in hours:
                pipe.hgetall(hour_metrics_key(campaign_id, hour))
            rows = [row for (campaign_id, hour), raw in zip(hours, await pipe.execute())
                    for row in decide.hour_rows(campaign_id, hour, raw)]
            session = await self.clients.cassandra()
            if self._insert is None:
                self._insert = session.prepare(self.INSERT.format(keyspace=self.keyspace))
            batches = bound_batches(self._insert, decide.partition_chunks(rows, 2))  # (campaign_id, date)
            for i in range(0, len(batches), 32):
                await asyncio.gather(*(run_async(session, b) for b in batches[i:i + 32]))
            return len(rows)
        except BaseException:
            await self.redis.sadd(DIRTY_HOURS, *members)
            raise

"""Release windows: how many outbox batches of a channel may be released and not yet finished.

The gate's pacing on ``lag:{channel}`` (pipeline/send/pacing.py's QueueLag) reads an estimate
that arrives a few hundred milliseconds after the batches it should have counted, so a
burst released meanwhile overshoots and waits in the outbox. A window bounds that burst
outright: the gate takes a place for each batch before it releases it, the sender gives
the place back when it has finished the batch, and the gate releases only while the
channel's batches in the window are fewer than its senders can work on at once, with a
little more so that a sender never waits for the gate (``WINDOW_FACTOR``).

A place is weighed by the batch's recipients: a campaign's full batch (``FULL_BATCH``, explode's
batch size) weighs one place, a triggered campaign's or a journey's batch of a few users a fraction
(at least ``MIN_WEIGHT``). Counting batches alone, a window of six places let six batches of one
user each through at a time, and at 1,000 events/s the gate's lanes waited on it for seconds.

Redis keys, per channel:
    flow:{channel}:out      zset   outbox batch id → lease expiry (Redis time, s). A place whose
                                   sender died expires, so a lost "finished" never shrinks the
                                   window for good; a replayed release keeps its one place.
    flow:{channel}:weights  hash   outbox batch id → its weight (absent: 1, a full batch).
    flow:{channel}:senders  hash   sender token → "<slots>:<Redis time of the report>" (every 1 s); reports
                                   older than ``FRESH_S`` are dropped, so the window follows the
                                   senders alive. With none, the window is open: the gate never
                                   waits on a channel nobody reports for.

All times are Redis' own (TIME), so workers' clocks do not matter.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis

from pipeline.explode import BATCH_SIZE
from schemas.keys import window_out_key, window_senders_key, window_weights_key

log = structlog.get_logger()

WINDOW_FACTOR = 1.5  # places per sender slot: a slot that finishes finds its next batch already released
FULL_BATCH = BATCH_SIZE  # recipients of a batch that weighs a whole place
MIN_WEIGHT = 0.05  # a batch of one user still costs its provider call: at most 20 such batches a place
LEASE_S = 120.0  # a place not given back in this long is taken as lost (a SIGKILLed sender)
FRESH_S = 3.0  # a sender that has not reported for this long is gone
REPORT_EVERY_S = 1.0  # how often a sender tells its slots (well inside FRESH_S)
RETRY_S = 0.05  # how often a gate looks again at a full window

# KEYS: out zset, senders hash, weights hash   ARGV: batch id, lease s, fresh s, factor, weight
# Returns 1 when the batch has (or already had) a place, 0 when the window is full.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease, fresh, factor = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local weight = tonumber(ARGV[5])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  return 1
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local slots = 0
local senders = redis.call('HGETALL', KEYS[2])
for i = 1, #senders, 2 do
  local n, at = string.match(senders[i + 1], '^([^:]+):(.+)$')
  if n and now - tonumber(at) <= fresh then
    slots = slots + tonumber(n)
  else
    redis.call('HDEL', KEYS[2], senders[i])
  end
end
local taken = redis.call('ZCARD', KEYS[1])
local used = taken - redis.call('HLEN', KEYS[3])  -- batches without a weight weigh one place
for _, w in ipairs(redis.call('HVALS', KEYS[3])) do used = used + tonumber(w) end
if slots == 0 or taken == 0 or used + weight <= math.ceil(slots * factor) + 1e-9 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(lease))
  if weight < 1 then
    redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
    redis.call('EXPIRE', KEYS[3], math.ceil(lease))
  end
  return 1
end
return 0
"""


def weight_of(recipients: int) -> float:
    """A batch's share of a place: its recipients over a full batch's, between ``MIN_WEIGHT`` and 1."""
    return min(1.0, max(MIN_WEIGHT, recipients / FULL_BATCH))

# KEYS: senders hash   ARGV: token, slots, fresh s
_REPORT = """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 2))
return 1
"""


class ReleaseWindow:
    """The gate's side: a place for each batch before it is released (``take``), given back at once
    when the gate released nothing after all (``give_back``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)

    async def try_take(self, channel: str, batch_id: str, recipients: int = FULL_BATCH) -> bool:
        got = await self._take(keys=[window_out_key(channel), window_senders_key(channel), window_weights_key(channel)],
                               args=[batch_id, LEASE_S, FRESH_S, WINDOW_FACTOR, repr(weight_of(recipients))])
        return bool(int(got))

    async def take(self, channel: str, batch_id: str, recipients: int = FULL_BATCH) -> float:
        """Wait for a place for ``batch_id`` (of ``recipients`` users); returns the seconds waited."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not await self.try_take(channel, batch_id, recipients):
            await asyncio.sleep(RETRY_S)
        return loop.time() - started

    async def give_back(self, channel: str, batch_id: str) -> None:
        await _free(self.redis, channel, batch_id)


async def _free(redis: Redis, channel: str, batch_id: str | bytes) -> None:
    """The batch's place (and its weight) back in the window."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(window_out_key(channel), batch_id)
        pipe.hdel(window_weights_key(channel), batch_id)
        await pipe.execute()


class SenderSlots:
    """The sender's side: its slots told every tick, and each finished batch's place given back.
    Written without waiting for the answer; a lost write costs a place until its lease ends."""

    def __init__(self, redis: Redis, channel: str, slots: int, token: str) -> None:
        self.redis = redis
        self.channel = channel
        self.slots = slots
        self.token = token
        self._report = redis.register_script(_REPORT) if redis is not None else None
        self._pending: set[asyncio.Future] = set()
        self._reported_at: float | None = None

    def _spawn(self, awaitable) -> None:
        future = asyncio.ensure_future(awaitable)
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("release window not updated", channel=self.channel, error=repr(future.exception()))

    def report(self) -> None:
        """Tell the sender's slots, at most every ``REPORT_EVERY_S`` (called on every lag tick)."""
        now = time.monotonic()
        if self._report is None or (self._reported_at is not None and now - self._reported_at < REPORT_EVERY_S):
            return
        self._reported_at = now
        self._spawn(self._report(keys=[window_senders_key(self.channel)], args=[self.token, self.slots, FRESH_S]))

    def finished(self, batch_id: str | bytes | None) -> None:
        if self.redis is not None and batch_id:
            self._spawn(_free(self.redis, self.channel, batch_id))

    def withdraw(self) -> None:
        """This sender stops: its slots no longer count."""
        if self.redis is not None:
            self._spawn(self.redis.hdel(window_senders_key(self.channel), self.token))

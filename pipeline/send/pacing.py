"""Rate and pacing, shared by every worker through Redis.

- ``TokenBucket`` (``bucket:{channel}``): the channel's rate; one atomic script per chunk of
  messages, on Redis's clock (its arithmetic is ``decisions.bucket_take``).
- ``QueueLag`` (``lag:{channel}``, ``lag:{channel}:by``): how long a batch released now would
  wait for this channel's senders, read by the gate to hold releases while they are behind
  (pipeline/gate_io.py, pipeline/release_windows.py).

Keys come from schemas/keys.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque

import structlog
from redis.asyncio import Redis

from schemas.keys import bucket_key, lag_key, lag_writer_key

log = structlog.get_logger()

# A token bucket's refill, the start of every bucket script (this one's and api/ratelimit.py's): KEYS[1] the
# bucket hash {tokens, ts}, ARGV[1] rate (tokens/s), ARGV[2] burst; leaves ``rate``, ``burst``, ``now`` and
# ``last`` (the refill's time) set and ``tokens`` refilled. Redis's own clock, so every process agrees.
REFILL_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
end
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate)
  last = now
end
"""

# ARGV[3] wanted: returns {granted, seconds to wait for the rest}.
TOKEN_BUCKET = REFILL_LUA + """
local wanted = tonumber(ARGV[3])
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
local wait = 0
if granted < wanted then
  wait = (math.min(wanted - granted, burst) - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', last))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, string.format('%.6f', wait)}
"""


class TokenBucket:
    """The channel's rate, shared by every worker through one Redis hash and one atomic script."""

    def __init__(self, redis: Redis, channel: str, rate: float, burst: float | None = None) -> None:
        self.redis = redis
        self.key = bucket_key(channel)
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)  # one second's worth by default
        self._script = redis.register_script(TOKEN_BUCKET)

    async def take(self, wanted: int) -> tuple[int, float]:
        granted, wait = await self._script(keys=[self.key], args=[self.rate, self.burst, wanted])
        return int(granted), float(wait)

    async def acquire(self, wanted: int) -> int:
        """Wait until at least one token is granted; returns how many (≤ ``wanted``)."""
        while True:
            granted, wait = await self.take(wanted)
            if granted:
                return granted
            await asyncio.sleep(max(wait, 0.001))



# KEYS: lag, its writer   ARGV: figure, this sender's token, ttl ms.
# The figure stands if it is the writer's own (up or down) or at least the standing one: with
# several workers the gate sees the most behind of them, not the last to write.
_REPORT_LAG = """
local standing, by = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])
if standing == false or by == ARGV[2] or tonumber(ARGV[1]) >= tonumber(standing) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class QueueLag:
    """How long a batch released now would wait for this sender, told to the gate.

    Three figures, of which ``tick`` reports the largest every ``every_s``:
    - ``picked_up``: the wait of each batch the sender starts, from the gate's release
      (the record's Kafka timestamp) to now;
    - ``saturated``: while every slot is busy, the age of the oldest batch in flight: the
      next batch waits at least that long, so a slow or failing provider shows at once;
    - ``queued``: the batches released but not started yet (Kafka's end offsets against the
      consumer's position) over the rate at which this sender finishes batches: the wait a
      batch released now will have. This one sees a burst the moment it lands in the
      outbox, not once its batches have waited; without it the gate released for as long
      as the first of them took to age, and the queue's p99 overshot.
    A batch retrying with slots to spare and nothing queued says nothing: its channel is
    not behind, and pacing must not hold the gate for it (nor the other channels that share
    the gate's partitions).

    ``lag:{channel}`` in Redis holds the figure of the sender most behind (``_REPORT_LAG``: a
    sender replaces its own figure, another's only with a larger one), expiring after
    ``ttl_ms`` so that idle senders read as "not behind"; the gate holds releases to the
    channel while it is over ``gate_pace_lag_s`` (pipeline/gate_io.py). Written without
    waiting for the answer: a lost write only delays pacing.
    """

    RATE_WINDOW_S = 3.0

    def __init__(self, redis: Redis, channel: str, every_s: float = 0.1, ttl_ms: int = 1000) -> None:
        self.redis = redis
        self.key = lag_key(channel)
        self.writer_key = lag_writer_key(channel)
        self.every_s = every_s
        self.ttl_ms = ttl_ms
        self._figure = 0.0
        self._finished: deque[float] = deque()
        self._busy_since: float | None = None
        self._write: asyncio.Future | None = None
        self.token = uuid.uuid4().hex  # this sender, among the workers that report on the channel
        self._script = redis.register_script(_REPORT_LAG) if redis is not None else None

    def picked_up(self, produced_at_ms: int | None) -> None:
        """A batch released at ``produced_at_ms`` (Kafka's timestamp) starts now."""
        if produced_at_ms is not None:
            self._figure = max(self._figure, time.time() - produced_at_ms / 1000)

    def saturated(self, oldest_in_flight_ms: int | None) -> None:
        """Every slot is busy: the next batch waits at least as long as the oldest in flight has run."""
        self.picked_up(oldest_in_flight_ms)

    def busy(self, now: float | None = None) -> None:
        """The sender went from idle to working: its finishing rate is measured from here."""
        self._busy_since = time.monotonic() if now is None else now

    def finished(self, now: float | None = None) -> None:
        self._finished.append(time.monotonic() if now is None else now)

    def queued(self, waiting: int, now: float | None = None) -> float | None:
        """``waiting`` batches not started: the seconds until the last of them starts, at the rate
        batches finished lately (None when too few did to tell)."""
        now = time.monotonic() if now is None else now
        while self._finished and now - self._finished[0] > self.RATE_WINDOW_S:
            self._finished.popleft()
        if waiting <= 0 or len(self._finished) < 2 or self._busy_since is None:
            return None
        span = min(self.RATE_WINDOW_S, max(now - self._busy_since, self.every_s))
        wait = waiting * span / len(self._finished)
        self._figure = max(self._figure, wait)
        return wait

    def tick(self) -> float:
        """Report the largest figure since the last tick (nothing when there is none); returns it."""
        figure, self._figure = self._figure, 0.0
        if figure > 0 and (self._write is None or self._write.done()):
            self._write = asyncio.ensure_future(
                self._script(keys=[self.key, self.writer_key], args=[f"{figure:.3f}", self.token, self.ttl_ms]))
            self._write.add_done_callback(_quietly)
        return figure


def _quietly(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("queue lag not reported", error=repr(future.exception()))

"""The gate's I/O outside its Faust tables: campaign facts, profiles, Redis scripts.

One round trip each, per batch: the campaign (cached), its status (cached 200 ms,
so a pause is seen within 1 s), the batch's profile facts (one Postgres query),
the budget reservation (one Lua call), held and deferred batches (one call).

Redis keys:
    campaign:{id}:status         read   "active" | "paused" | "cancelled" | "completed"
    campaign:{id}:spend          r/w    budget reserved so far (float, currency units)
    campaign:{id}:reservations   r/w    hash "<partition>:<offset>" → counts it reserved,
                                        so a replayed record reserves nothing twice
    campaign:{id}:held           push   raw message-requests batches of a paused campaign, once per
    campaign:{id}:held_sources   r/w    record (pipeline/control_io.py's HeldBatches)
    gate:deferred                r/w    zset: encoded outbox batch → release time (epoch s): quiet hours'
                                        end, or the recipients' local hour (the campaign's delivery)
    lag:{channel}                read   seconds a batch released now would wait for the channel's
                                        senders (pipeline/send/pacing.py's QueueLag; 1 s TTL)
    flow:{channel}:out|senders   r/w    the channel's release window (pipeline/release_windows.py)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import time as clock

import asyncpg
import orjson
import redis.asyncio as aioredis

from config import Settings
from pipeline import erase as erase_rules
from pipeline import erase_io
from pipeline import gate as gate_rules
from pipeline import journey_exits
from pipeline.release_windows import FULL_BATCH, ReleaseWindow
from pipeline.campaign_state import campaign_status, load_campaign
from pipeline.control_io import HeldBatches
from pipeline.pii import HAS_EMAIL_SQL, HAS_PHONE_SQL
from pipeline.signing import signing_key
from pipeline.worker_clients import WorkerClients
from schemas.encoding import from_json
from schemas.keys import DEFERRED, lag_key, reservations_key, spend_key

RESERVATION_TTL_S = 7 * 86400
CLAIM_LEASE_S = 60.0
CAMPAIGN_CACHE_S = 5.0
LAG_CHECK_S = 0.1

# KEYS: spend, reservations   ARGV: max_spend, reservation id, then (unit_cost, count) per channel
# Returns the allowed count per channel, in ARGV order; the same answer again for a known reservation.
_RESERVE = """
local done = redis.call('HGET', KEYS[2], ARGV[2])
if done then return cjson.decode(done) end
local max = tonumber(ARGV[1])
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {}
for i = 3, #ARGV, 2 do
  local cost, count = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local allowed = count
  if cost > 0 then
    local room = max - spent
    if room <= 0 then allowed = 0 else allowed = math.min(count, math.floor(room / cost + 1e-9)) end
  end
  spent = spent + allowed * cost
  out[#out + 1] = allowed
end
redis.call('SET', KEYS[1], string.format('%.6f', spent))
redis.call('HSET', KEYS[2], ARGV[2], cjson.encode(out))
redis.call('EXPIRE', KEYS[2], 604800)
return out
"""

# KEYS: deferred zset   ARGV: now, lease seconds, limit
# Claims due members by pushing their score a lease ahead, so only one worker takes each and a
# worker that dies before sending (and removing) them leaves them due again after the lease.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), m) end
return due
"""


@dataclass(frozen=True, slots=True)
class GateCampaign:
    channels: tuple[str, ...]
    max_spend: float | None
    unit_costs: dict[str, float]
    quiet_hours: tuple[clock, clock] | None
    local: gate_rules.LocalDelivery | None = None  # delivery.local_time: each recipient's local hour
    journey_id: int | None = None  # a journey's send node (pipeline/journey_exits.py)
    # Channels whose quiet hours differ from ``quiet_hours`` (SMS's own, gate_rules.channel_quiet_window).
    channel_quiet_hours: dict[str, tuple[clock, clock] | None] = field(default_factory=dict)

    def quiet_hours_for(self, channel: str) -> tuple[clock, clock] | None:
        return self.channel_quiet_hours.get(channel, self.quiet_hours)


class GateIO:
    """Every store call of the gate, over the worker's shared clients (``pipeline.worker_clients``);
    a GateIO built without them opens its own, and ``aclose`` closes only those."""

    def __init__(self, settings: Settings, clients: WorkerClients | None = None) -> None:
        self.settings = settings
        self._owned = clients is None
        self.clients = clients if clients is not None else WorkerClients(settings)
        self._campaigns: dict[int, tuple] = {}  # campaign_id → (cached at, quiet hours, local delivery, by channel)
        self._scripts: dict = {}
        self._held: HeldBatches | None = None
        self._lags: dict[str, tuple[float, float]] = {}
        self._window: ReleaseWindow | None = None
        self.policy = gate_rules.GatePolicy.from_settings(settings)

    async def postgres(self) -> asyncpg.Pool:
        return await self.clients.postgres()

    async def aclose(self) -> None:
        if self._owned:
            await self.clients.close()
        self._scripts, self._window = {}, None

    @property
    def redis(self) -> aioredis.Redis:
        redis = self.clients.redis()
        if not self._scripts:
            self._scripts = {name: redis.register_script(src)
                             for name, src in (("reserve", _RESERVE), ("claim", _CLAIM))}
            self._held = HeldBatches(redis)
        return redis

    async def campaign(self, campaign_id: int) -> GateCampaign | None:
        """What the gate needs of a campaign: ``pipeline.campaign_state.load_campaign`` (cached there),
        plus the quiet hours of its schedule and its local-hour delivery (cached here, CAMPAIGN_CACHE_S)."""
        pool = await self.postgres()
        runtime = await load_campaign(pool, campaign_id, self.settings)
        if runtime is None:
            return None
        now = time.monotonic()
        cached = self._campaigns.get(campaign_id)
        if cached is None or now - cached[0] >= CAMPAIGN_CACHE_S:
            row = await pool.fetchrow("SELECT schedule, delivery FROM campaigns WHERE campaign_id = $1", campaign_id)
            schedule, delivery = (from_json(row["schedule"]), from_json(row["delivery"])) if row else (None, None)
            spec = getattr(runtime, "quiet_hours", None)
            if spec is None:
                spec = schedule.get("quiet_hours") if isinstance(schedule, dict) else None
            quiet = gate_rules.quiet_window(spec, self.policy)
            by_channel = {ch: gate_rules.channel_quiet_window(spec, ch, self.policy) for ch in runtime.channels}
            cached = (now, quiet, gate_rules.local_delivery(delivery, schedule),
                      {ch: window for ch, window in by_channel.items() if window != quiet})
            self._campaigns[campaign_id] = cached
        return GateCampaign(
            channels=tuple(runtime.channels),
            max_spend=runtime.budget.max_spend if runtime.budget is not None else None,
            unit_costs=dict(runtime.unit_costs),
            quiet_hours=cached[1],
            local=cached[2],
            journey_id=runtime.journey_id,
            channel_quiet_hours=cached[3],
        )

    async def exited(self, journey_id: int | None, step: str, user_ids: list[int]) -> set[int]:
        """Users of a journey step who left the journey by its goal (or a stop) since it was queued."""
        return await journey_exits.exited(self.redis, journey_id, step, user_ids)

    async def erased(self, user_ids: list[int], profiles: dict) -> set[int]:
        """Of the users without a profile, those erased (pipeline/erase.py): only they can be, as an erased
        user's profile is deleted and a new sign-up's profile clears the mark."""
        missing = [uid for uid in user_ids if uid not in profiles]
        if not missing:
            return set()
        key = erase_rules.marker_key(signing_key(self.settings))
        return set(await erase_io.erased_markers(await self.postgres(), key, missing))

    async def lag(self, channel: str) -> float:
        """The channel's queue lag as its senders last reported it (0 when none did lately), read at
        most every LAG_CHECK_S."""
        now = time.monotonic()
        cached = self._lags.get(channel)
        if cached is None or now - cached[0] >= LAG_CHECK_S:
            raw = await self.redis.get(lag_key(channel))
            cached = (now, float(raw) if raw else 0.0)
            self._lags[channel] = cached
        return cached[1]

    @property
    def window(self) -> ReleaseWindow:
        if self._window is None:
            self._window = ReleaseWindow(self.redis)
        return self._window

    async def pace(self, channels: list[str], batch_id: str | None = None, recipients: int | None = None) -> float:
        """Wait while any of ``channels`` is behind (queue lag over ``gate_pace_lag_s``), then for a
        place in each channel's release window for ``batch_id``'s outbox batch: the work stays in
        message-requests instead of piling up in outboxes. Returns the seconds waited."""
        target = self.settings.gate_pace_lag_s
        if target <= 0:
            return 0.0
        started, waited = time.monotonic(), False
        for channel in channels:
            while await self.lag(channel) > target:
                waited = True
                await asyncio.sleep(LAG_CHECK_S)
        if batch_id is not None:
            for channel in channels:
                if await self.window.take(channel, gate_rules.outbox_batch_id(batch_id, channel),
                                          recipients if recipients is not None else FULL_BATCH) > 0:
                    waited = True
        return time.monotonic() - started if waited else 0.0

    async def unpace(self, channels: list[str], batch_id: str) -> None:
        """Give back the window places of ``batch_id`` on ``channels`` (nothing was released there)."""
        if self.settings.gate_pace_lag_s > 0:
            for channel in channels:
                await self.window.give_back(channel, gate_rules.outbox_batch_id(batch_id, channel))

    async def status(self, campaign_id: int) -> str:
        """The campaign's running status (cached 200 ms); "active" when none was set."""
        return await campaign_status(self.redis, campaign_id) or "active"

    async def profiles(self, user_ids: list[int]) -> dict[int, gate_rules.Profile]:
        pool = await self.postgres()
        rows = await pool.fetch(
            f"SELECT user_id, timezone, {HAS_EMAIL_SQL} AS e, {HAS_PHONE_SQL} AS p,"
            " jsonb_array_length(push_tokens) > 0 AS t FROM users WHERE user_id = ANY($1::bigint[])",
            user_ids,
        )
        return {
            r["user_id"]: gate_rules.Profile(
                r["timezone"], frozenset(a for a, has in (("email", r["e"]), ("phone", r["p"]), ("push", r["t"])) if has))
            for r in rows
        }

    async def reserve_budget(self, campaign_id: int, reservation: str, max_spend: float,
                             costs: dict[str, float], wanted: dict[str, int]) -> dict[str, int]:
        channels = list(wanted)
        if not any(wanted.values()):
            return dict(wanted)
        args: list = [repr(max_spend), reservation]
        for ch in channels:
            args += [repr(costs.get(ch, 0.0)), wanted[ch]]
        _ = self.redis
        allowed = await self._scripts["reserve"](
            keys=[spend_key(campaign_id), reservations_key(campaign_id)], args=args)
        return {ch: int(n) for ch, n in zip(channels, allowed)}

    async def halt(self, campaign_id: int, status: str, source: str, raw: bytes) -> None:
        """What a paused (held) or cancelled (dropped) campaign does to a batch; events are
        ``pipeline.control.halted_events``."""
        _ = self.redis
        await self._held.halt(campaign_id, status, source, raw)

    async def defer(self, batches: list[tuple[float, dict]]) -> None:
        await self.redis.zadd(DEFERRED, {orjson.dumps(b): t for t, b in batches})

    async def claim_due(self, now: float, limit: int = 100) -> list[bytes]:
        _ = self.redis
        return await self._scripts["claim"](keys=[DEFERRED], args=[repr(now), repr(CLAIM_LEASE_S), limit])

    async def released(self, members: list[bytes]) -> None:
        if members:
            await self.redis.zrem(DEFERRED, *members)

"""The send_<channel> stage: outbox batches in, provider calls, one DeliveryEventBatch out per batch.

    outbox.<channel> ─► [send_<channel>] ─► provider ─► delivery-events (same partition)
                                       └──► dead-letters (one per message that could not be sent)

For each MessageBatch (one campaign, one channel, one partition, many users):

1. **Campaign state** (Redis ``campaign:{id}:status``, cached 200 ms): paused → the batch's
   bytes go to ``campaign:{id}:held`` and each recipient gets a "held" event (the control
   agent re-sends the list on resume); cancelled → "cancelled" events, nothing sent.
2. **Idempotency ledger** (one HMGET): recipients already acknowledged by the provider are
   not sent again (see ``SendLedger`` for the crash windows).
3. **Campaign and profiles**: the campaign's content for the channel, compiled once and
   cached; the recipients' profiles in ONE PostgreSQL query per batch.
4. **Render once per message to what the provider takes** (email: the MIME bytes, with
   List-Unsubscribe headers, tracked links and an open pixel), before any retry.
5. **Rate**: tokens from the channel's bucket in Redis (``TOKEN_BUCKET``, one Lua call per
   chunk, shared by every worker), then the adapter's ``send_many`` (concurrent, kept-alive).
6. **Retry**: transient outcomes (timeouts, 5xx, 429 with Retry-After) are retried in process
   with exponential backoff and jitter, ``RetryPolicy.max_attempts`` in all; permanent ones are
   bounced (the recipient's fault: the gate's suppression list learns it from the event) or
   failed; both, and transients left after the last attempt, become dead letters carrying
   the batch narrowed to that recipient (``make dlq-replay`` sends them again).
7. **Events**: ONE DeliveryEventBatch for the input batch, to the batch's partition.

Pure pieces (``RetryPolicy``, ``bucket_take``, ``message_address``, ``outcome_event``) are
plain functions tested in tests/unit/pipeline/test_sending.py; ``Sender`` is the I/O loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.asyncio import BlockingConnectionPool, Redis

from config import Settings
from pipeline.campaigns import inline_parts
from pipeline.channels import Channel, Message, SendResult
from pipeline.channels.base import PERMANENT, SENT, TRANSIENT
from pipeline.channels.mime import _BARE_ADDRESS
from pipeline.channels.tracking import link_key, rewrite_links
from pipeline.codecs import RawRecord, dead_letter, decode_batch
from pipeline.release_windows import SenderSlots
from pipeline.signing import signing_key
from pipeline.campaign_state import load_campaign
from pipeline.templates import PART_KINDS, CompiledTemplate, RenderError, TemplateContent, message_variables
from pipeline.unsubscribe import list_unsubscribe_headers, make_unsubscribe_token, unsubscribe_url
from schemas.messages import DeliveryEvent, DeliveryEventBatch, MessageBatch, Recipient, message_id
from schemas.records import DeadLetter

log = structlog.get_logger()

# ---------------------------------------------------------------- settings (with defaults until Settings has them)

DEFAULT_RATES = {"email": 5000.0, "sms": 100.0, "push": 5000.0, "in_app": 50000.0, "webhook": 1000.0}


def setting(settings: Settings, name: str, default: Any) -> Any:
    value = getattr(settings, name, None)
    return default if value is None else value


def channel_rate(settings: Settings, channel: str) -> float:
    """Messages per second for ``channel`` across all workers (HERALD_RATE_EMAIL, HERALD_RATE_SMS, ...)."""
    return float(setting(settings, f"rate_{channel}", DEFAULT_RATES[channel]))


# ---------------------------------------------------------------- retry policy (pure)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in each wait.

    After the ``n``-th failed attempt the wait is drawn from [c/2, c] with
    c = min(cap_s, base_s * 2**(n-1)) ("equal jitter": never a zero wait that
    hammers a struggling provider, never synchronized across workers). A
    Retry-After from the provider is honoured, up to ``max_retry_after_s``
    so one batch never holds its slot for long. Worst case with the defaults:
    0.5 + 1 + 2 + 4 + 8 = 15.5 s over 6 attempts.
    """

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 10.0
    max_retry_after_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=int(setting(settings, "send_max_attempts", cls.max_attempts)),
            base_s=float(setting(settings, "send_backoff_base_s", cls.base_s)),
            cap_s=float(setting(settings, "send_backoff_cap_s", cls.cap_s)),
            max_retry_after_s=float(setting(settings, "send_max_retry_after_s", cls.max_retry_after_s)),
        )

    def should_retry(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts

    def delay(self, attempts_made: int, retry_after_s: float | None = None,
              rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** max(0, attempts_made - 1))
        wait = ceiling / 2 + rand() * ceiling / 2
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_retry_after_s))
        return wait


# ---------------------------------------------------------------- token bucket


def bucket_take(tokens: float, last: float, now: float, rate: float, burst: float, wanted: int
                ) -> tuple[int, float, float]:
    """Take up to ``wanted`` tokens: (granted, seconds until the rest could be granted, tokens left).

    The bucket refills at ``rate`` per second up to ``burst``. A partial grant is
    allowed (send what you may now); the wait is for what is still missing, at most
    one burst. This is the Python twin of ``TOKEN_BUCKET`` (the script Redis runs),
    kept for the unit tests and the docs.
    """
    if now > last:
        tokens = min(burst, tokens + (now - last) * rate)
    granted = min(wanted, int(math.floor(tokens)))
    tokens -= granted
    wait = 0.0 if granted >= wanted else (min(wanted - granted, burst) - tokens) / rate
    return granted, max(0.0, wait), tokens


# KEYS[1] bucket hash {tokens, ts}; ARGV rate, burst, wanted. Redis's own clock, so every worker agrees.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
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
        self.key = f"bucket:{channel}"
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


# ---------------------------------------------------------------- idempotency ledger


class SendLedger:
    """Which messages the provider acknowledged, and whether their events went out.

    One Redis hash per (campaign, channel, step, partition) — a batch touches one
    key — mapping user_id to the provider's id once acknowledged, then to "!" once
    the "sent" event is published. On a replay of a batch (crash before the Kafka
    commit, a held batch re-sent, ``dlq-replay``):

        "!"          skipped: sent and reported
        provider id  not sent again; its "sent" event is published now
        absent       sent

    Crash windows, honestly: (1) a message the provider accepted but whose
    answer had not reached us, or whose acknowledgement was not yet written (an
    ``AckWriter`` writes each as it arrives, a loop tick later), is sent again on
    replay: at least once, not exactly once. At most the requests in flight at the
    crash; SMTP and these providers have no idempotency key we could pass instead. (2) Between the HSET and the event, nothing is lost: the
    replay publishes the event without sending. (3) Between the event and the "!",
    the replay publishes a second "sent" event for the same message_id (consumers
    should count by message_id). Keys expire after ``ttl_s`` (8 days: longer than
    the outbox topic's retention, so any batch Kafka can replay still finds its
    record).
    """

    REPORTED = b"!"

    def __init__(self, redis: Redis, ttl_s: int = 8 * 24 * 3600) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    @staticmethod
    def key(batch: MessageBatch, channel: str) -> str:
        return f"sends:{batch.campaign_id}:{channel}:{batch.step}:{batch.partition}"

    async def lookup(self, key: str, user_ids: Sequence[int]) -> list[bytes | None]:
        if not user_ids:
            return []
        return await self.redis.hmget(key, [str(u) for u in user_ids])

    async def acked(self, acks: Mapping[str, Mapping[int, str]]) -> None:
        """Record acknowledgements: ``{ledger key: {user_id: provider id}}``, one round trip."""
        if acks:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, by_user in acks.items():
                    pipe.hset(key, mapping={str(u): (p or "-") for u, p in by_user.items()}).expire(key, self.ttl_s)
                await pipe.execute()

    async def reported(self, key: str, user_ids: Sequence[int]) -> None:
        if user_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=dict.fromkeys((str(u) for u in user_ids), self.REPORTED))
                pipe.expire(key, self.ttl_s)
                await pipe.execute()


# KEYS: claim   ARGV: token, lease ms. Extends (1) or releases (del) the claim only for its holder.
_EXTEND_CLAIM = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE_CLAIM = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class BatchClaims:
    """One sender at a time per outbox batch, across workers.

    Kafka gives a partition to one consumer, but not exclusively in time: around a
    rebalance (a worker killed or restarted, one evicted after a stall) the old owner can
    still be sending a batch that the new owner has started again from the last commit.
    Both would read the ledger before either acknowledged anything, and send everything
    twice. The same holds for two records of one batch (the gate's replay after a worker
    was killed releases it again). A sender therefore claims the batch
    (``claim:<ledger key>:<batch id>``, SET NX with a lease, renewed while it works) before
    it reads the ledger, and releases it when the batch's events are out. Another sender of
    the same batch waits for the claim, then reads a ledger that has all the first one's
    acknowledgements. A holder that died
    leaves its claim to expire after ``lease_s``: the messages it had sent without storing
    the acknowledgement are the only ones sent again.
    """

    def __init__(self, redis: Redis, lease_s: float = 15.0, poll_s: float = 0.2) -> None:
        self.redis = redis
        self.lease_ms = int(lease_s * 1000)
        self.poll_s = poll_s
        self._extend = redis.register_script(_EXTEND_CLAIM)
        self._release = redis.register_script(_RELEASE_CLAIM)

    @staticmethod
    def key(batch: MessageBatch, channel: str) -> str:
        """The batch, not the record: after a SIGKILL the gate can release a batch again (its
        dedup state and offsets lost with the worker, its outbox record already in Kafka),
        and the two records of one batch must not be sent at once either."""
        return f"claim:{SendLedger.key(batch, channel)}:{batch.batch_id}"

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[float]:
        """Hold ``key`` for the body (waiting for another holder first); yields the seconds waited."""
        token = uuid.uuid4().hex
        started = time.monotonic()
        while not await self.redis.set(key, token, nx=True, px=self.lease_ms):
            await asyncio.sleep(self.poll_s)
        renewing = asyncio.ensure_future(self._renew(key, token))
        try:
            yield time.monotonic() - started
        finally:
            renewing.cancel()
            await self._release(keys=[key], args=[token])

    async def _renew(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self._extend(keys=[key], args=[token, self.lease_ms]):
                    log.warning("batch claim lost", key=key)
                    return
            except Exception as exc:  # noqa: BLE001 - a Redis hiccup; the next renewal tries again
                log.warning("batch claim not renewed", key=key, error=repr(exc))


class AckWriter:
    """Acknowledgements written as the provider's answers arrive, not when the whole chunk returns.

    ``add`` is synchronous (the adapters' ``on_result`` callback). One write at a time:
    the answers that arrive while a write is on its way go together in the next one, so
    a chunk holds at most one Redis connection. ``flush`` waits until every
    acknowledgement handed over so far is stored, and raises if a write failed (the
    batch is then retried, and whatever the ledger did store still holds).
    """

    def __init__(self, ledger: SendLedger) -> None:
        self.ledger = ledger
        self._pending: dict[str, dict[int, str]] = {}
        self._writing: asyncio.Future | None = None

    def add(self, key: str, user_id: int, provider_id: str | None) -> None:
        self._pending.setdefault(key, {}).setdefault(user_id, provider_id or "-")
        if self._writing is None or self._writing.done():
            self._writing = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # the answers of this loop tick share the write
        while self._pending:
            pending, self._pending = self._pending, {}
            await self.ledger.acked(pending)

    async def flush(self) -> None:
        while self._writing is not None:
            writing = self._writing
            await writing
            if self._writing is writing:
                self._writing = None if not self._pending else asyncio.ensure_future(self._drain())


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
        self.key = f"lag:{channel}"
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
                self._script(keys=[self.key, f"{self.key}:by"], args=[f"{figure:.3f}", self.token, self.ttl_ms]))
            self._write.add_done_callback(_quietly)
        return figure


def _quietly(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("queue lag not reported", error=repr(future.exception()))


# ---------------------------------------------------------------- campaign status and definition


class StatusCache:
    """``campaign:{id}:status`` read at most every ``ttl_s`` per campaign (pause takes effect within it)."""

    def __init__(self, redis: Redis, ttl_s: float = 0.2) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._seen: dict[int, tuple[float, str | None]] = {}

    async def get(self, campaign_id: int) -> str | None:
        now = time.monotonic()
        cached = self._seen.get(campaign_id)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        raw = await self.redis.get(f"campaign:{campaign_id}:status")
        status = raw.decode() if isinstance(raw, bytes) else raw
        self._seen[campaign_id] = (now, status)
        return status


@dataclass
class SendPlan:
    """What one campaign sends on one channel: compiled content, its variables, its target and cost."""

    campaign_id: int
    channel: str
    template: CompiledTemplate
    variables: dict[str, Any]
    unit_cost: float
    url: str | None = None  # the webhook channel's target


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def plan_content(channel: str, entry: Mapping[str, Any], template: Mapping[str, Any] | None) -> TemplateContent:
    """The content to render: the named template, its parts overridden by the campaign's inline parts."""
    inline = {k: v for k, v in inline_parts(channel, entry).items() if k in PART_KINDS[channel]}
    if channel == "webhook" and isinstance(entry.get("payload"), Mapping):
        inline["payload"] = orjson.dumps(entry["payload"]).decode()
    if template is None:
        return TemplateContent(channel=channel, parts=inline)
    content = TemplateContent.from_record(template)
    return TemplateContent(channel=channel, parts={**content.parts, **inline},
                           default_language=content.default_language,
                           translations=content.translations, variants=content.variants)


class CampaignPlans:
    """Per-campaign send plans (``pipeline.campaign_state.load_campaign``), compiled once and cached ``ttl_s``.

    Content is frozen once a campaign is launched, so the cache only bounds how
    late a template edit shows (the compiled form is reused while it lasts).
    """

    def __init__(self, pool: Any, settings: Settings, channel: str, ttl_s: float = 5.0) -> None:
        self.pool = pool
        self.settings = settings
        self.channel = channel
        self.ttl_s = ttl_s
        self._plans: dict[int, tuple[float, SendPlan | None]] = {}
        self._lock = asyncio.Lock()

    async def get(self, campaign_id: int) -> SendPlan | None:
        cached = self._plans.get(campaign_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        async with self._lock:
            cached = self._plans.get(campaign_id)
            if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
                return cached[1]
            plan = await self._load(campaign_id)
            self._plans[campaign_id] = (time.monotonic(), plan)
            return plan

    async def _load(self, campaign_id: int) -> SendPlan | None:
        campaign = await load_campaign(self.pool, campaign_id, self.settings)
        if campaign is None:
            return None
        entry = campaign.content.get(self.channel)
        if not isinstance(entry, Mapping):
            return None
        return SendPlan(
            campaign_id=campaign_id, channel=self.channel,
            template=CompiledTemplate(plan_content(self.channel, entry, campaign.templates.get(self.channel))),
            variables=dict(entry.get("variables") or {}),
            unit_cost=campaign.unit_cost(self.channel),
            url=campaign.webhook_url if self.channel == "webhook" else None,
        )


# ---------------------------------------------------------------- profiles

PROFILE_COLUMNS = ("user_id, email, phone, first_name, last_name, country, language, timezone, attributes,"
                   " push_tokens")


class PostgresProfiles:
    """The recipients' profiles, one query per batch."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def fetch(self, user_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        if not user_ids:
            return {}
        rows = await self.pool.fetch(
            f"SELECT {PROFILE_COLUMNS} FROM users WHERE user_id = ANY($1::bigint[])", list(user_ids))
        profiles = {}
        for row in rows:
            profile = dict(row)
            profile["attributes"] = _json(profile["attributes"]) or {}
            profile["push_tokens"] = _json(profile["push_tokens"]) or []
            profiles[profile["user_id"]] = profile
        return profiles


# ---------------------------------------------------------------- pure decisions


def message_address(channel: str, profile: Mapping[str, Any] | None, user_id: int, url: str | None = None
                    ) -> list[str]:
    """Where one message goes: [] if the user cannot be reached on ``channel`` (push: every device token)."""
    if channel == "in_app":
        return [str(user_id)]
    if channel == "webhook":
        return [url] if url else []
    if profile is None:
        return []
    if channel == "email":
        email = (profile.get("email") or "").strip()
        return [email] if _BARE_ADDRESS.fullmatch(email) else []  # nothing else is deliverable
    if channel == "sms":
        phone = (profile.get("phone") or "").strip()
        return [phone] if phone else []
    if channel == "push":
        return [t for t in dict.fromkeys(profile.get("push_tokens") or []) if isinstance(t, str) and t]
    return []


def combine(results: Sequence[SendResult]) -> SendResult:
    """One user's outcome over several sends (push to each device): any success wins, then transient."""
    for wanted in (SENT, TRANSIENT):
        for result in results:
            if result.outcome == wanted:
                return result
    return SendResult.permanent("; ".join(dict.fromkeys(r.reason for r in results)),
                                code=results[0].code if results else None,
                                recipient_problem=bool(results) and all(r.recipient_problem for r in results))


def outcome_event(batch: MessageBatch, recipient: Recipient, channel: str, result: SendResult, attempts: int,
                  unit_cost: float) -> DeliveryEvent:
    """The event for a message's final outcome: sent, bounced (the recipient's fault) or failed."""
    base = {"message_id": message_id(batch.campaign_id, recipient.user_id, channel, batch.step),
            "campaign_id": batch.campaign_id, "user_id": recipient.user_id, "channel": channel,
            "step": batch.step, "variant": recipient.variant}
    if result.outcome == SENT:
        return DeliveryEvent(**base, status="sent", provider_id=result.provider_id, cost=unit_cost)
    if result.outcome == PERMANENT:
        status = "bounced" if result.recipient_problem else "failed"
        return DeliveryEvent(**base, status=status, reason=result.reason or result.code)
    return DeliveryEvent(**base, status="failed",
                         reason=f"gave up after {attempts} attempt(s): {result.reason}")


def narrowed(batch: MessageBatch, recipient: Recipient) -> MessageBatch:
    """The batch reduced to one recipient: what a dead letter carries so a replay sends only that message."""
    return batch.model_copy(update={"recipients": [recipient], "batch_id": f"{batch.batch_id}:u{recipient.user_id}"})


# ---------------------------------------------------------------- the sender

EmitEvents = Callable[[int, DeliveryEventBatch], Awaitable[None]]
EmitDead = Callable[[list[DeadLetter]], Awaitable[None]]


@dataclass
class _Out:
    """One provider call: the message and whose it is."""

    index: int  # recipient index in the batch
    message: Message


@dataclass
class BatchReport:
    events: list[DeliveryEvent] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    sends: int = 0


class Sender:
    """The send_<channel> loop body for one process: open once, then ``handle`` raw outbox records."""

    def __init__(self, settings: Settings, channel: str, redis: Redis, adapter: Channel, plans: Any, profiles: Any,
                 emit_events: EmitEvents, emit_dead: EmitDead, policy: RetryPolicy | None = None,
                 bucket: TokenBucket | None = None, chunk: int = 200, batches_in_flight: int | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self.channel = channel
        self.stage = f"send_{channel}"
        self.redis = redis
        self.adapter = adapter
        self.plans = plans
        self.profiles = profiles
        self.emit_events = emit_events
        self.emit_dead = emit_dead
        self.policy = policy or RetryPolicy.from_settings(settings)
        self.bucket = bucket or TokenBucket(redis, channel, channel_rate(settings, channel))
        self.ledger = SendLedger(redis)
        self.claims = BatchClaims(redis)
        self.status = StatusCache(redis)
        self.chunk = chunk
        # Batches of one poll processed at once when ``handle`` is called directly; the worker's
        # consumer (consume_concurrently) hands over one batch at a time and bounds them itself.
        self.in_flight = asyncio.Semaphore(batches_in_flight or int(setting(settings, "sender_batches_in_flight", 2)))
        self.sleep = sleep
        key = signing_key(settings)
        self.signing_key = key
        self.link_key = link_key(key)
        self.public_url = settings.public_url.rstrip("/")
        self.unsubscribe_prefix = unsubscribe_url(settings, "")
        self.build = getattr(adapter, "build", None)  # SMTP: MIME bytes built once per message

    # -- records in ----------------------------------------------------------------------------
    async def handle(self, raws: list[RawRecord]) -> None:
        """Process every batch of a poll concurrently (bounded); returns when all are accounted for."""
        decoded = decode_batch(raws, MessageBatch, stage=self.stage)
        dead = list(decoded.dead)
        work = []
        for batch, raw in zip(decoded.records, decoded.sources):
            if batch.channel not in (None, self.channel):
                dead.append(dead_letter(raw, self.stage, f"a {batch.channel} batch on {raw.topic}"))
                continue
            work.append(self._guarded(batch, raw))
        if dead:
            await self.emit_dead(dead)
        # Let every batch finish before failing the poll (then it is replayed, uncommitted, and the
        # ledger skips what was sent): an orphaned batch still sending during the replay could double-send.
        failures = [r for r in await asyncio.gather(*work, return_exceptions=True) if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    async def _guarded(self, batch: MessageBatch, raw: RawRecord) -> None:
        async with self.in_flight:
            await self.process(batch, raw)

    # -- one batch -----------------------------------------------------------------------------
    async def process(self, batch: MessageBatch, raw: RawRecord) -> BatchReport:
        report = BatchReport()
        status = await self.status.get(batch.campaign_id)
        if status in ("paused", "cancelled"):
            if status == "paused":
                await self.redis.rpush(f"campaign:{batch.campaign_id}:held", raw.value or b"")
            report.events = [self._plain_event(batch, r, status="held" if status == "paused" else "cancelled",
                                               reason=f"campaign {status}") for r in batch.recipients]
            await self.emit_events(batch.partition, DeliveryEventBatch(events=report.events))
            return report

        async with self.claims.hold(BatchClaims.key(batch, self.channel)):
            return await self._claimed(batch, raw, report)

    async def _claimed(self, batch: MessageBatch, raw: RawRecord, report: BatchReport) -> BatchReport:
        """The batch, held by this sender alone: the ledger read, the sends, the events."""
        ledger_key = SendLedger.key(batch, self.channel)
        recorded = await self.ledger.lookup(ledger_key, [r.user_id for r in batch.recipients])
        todo: list[int] = []
        for i, mark in enumerate(recorded):
            if mark is None:
                todo.append(i)
            elif mark != SendLedger.REPORTED:  # acknowledged, event never published: publish, do not send
                report.events.append(outcome_event(batch, batch.recipients[i], self.channel,
                                                   SendResult.sent(mark.decode()), 1,
                                                   self.settings.unit_costs.get(self.channel, 0.0)))
        if todo:
            await self._send(batch, raw, todo, ledger_key, report)
        if report.dead:
            await self.emit_dead(report.dead)
        if report.events:
            await self.emit_events(batch.partition, DeliveryEventBatch(events=report.events))
            sent = [e.user_id for e in report.events if e.status == "sent"]
            await self.ledger.reported(ledger_key, sent)
        return report

    async def _halt(self, batch: MessageBatch, recipients: list[Recipient], status: str, report: BatchReport) -> None:
        """Hold (paused) or drop (cancelled) the recipients of ``batch`` that were not sent to."""
        if not recipients:
            return
        if status == "paused":
            rest = batch.model_copy(update={"recipients": recipients})
            await self.redis.rpush(f"campaign:{batch.campaign_id}:held", orjson.dumps(rest.model_dump(mode="json")))
        report.events += [self._plain_event(batch, r, status="held" if status == "paused" else "cancelled",
                                            reason=f"campaign {status}") for r in recipients]

    def _plain_event(self, batch: MessageBatch, r: Recipient, status: str, reason: str | None) -> DeliveryEvent:
        return DeliveryEvent(message_id=message_id(batch.campaign_id, r.user_id, self.channel, batch.step),
                             campaign_id=batch.campaign_id, user_id=r.user_id, channel=self.channel,
                             step=batch.step, variant=r.variant, status=status, reason=reason)

    def _dead(self, batch: MessageBatch, raw: RawRecord, recipient: Recipient, reason: str) -> DeadLetter:
        narrow = narrowed(batch, recipient)
        return DeadLetter(source_topic=raw.topic, partition=raw.partition, offset=raw.offset, stage=self.stage,
                          reason=reason, key=base64.b64encode(str(recipient.user_id).encode()).decode(),
                          value=base64.b64encode(orjson.dumps(narrow.model_dump(mode="json"))).decode())

    async def _send(self, batch: MessageBatch, raw: RawRecord, todo: list[int], ledger_key: str,
                    report: BatchReport) -> None:
        plan = await self.plans.get(batch.campaign_id)
        if plan is None:
            # One letter for the whole batch (a deleted campaign can have many thousand messages in flight).
            reason = f"campaign {batch.campaign_id} has no {self.channel} content (unknown campaign?)"
            report.events += [self._plain_event(batch, batch.recipients[i], "failed", reason) for i in todo]
            report.dead.append(dead_letter(raw, self.stage, reason))
            return
        needs_profile = self.channel != "webhook" or bool(plan.template.content.parts)
        profiles = await self.profiles.fetch([batch.recipients[i].user_id for i in todo]) if needs_profile else {}
        outs: list[_Out] = []
        for i in todo:
            r = batch.recipients[i]
            profile = profiles.get(r.user_id)
            addresses = message_address(self.channel, profile, r.user_id, plan.url)
            if not addresses:
                report.events.append(self._plain_event(batch, r, "failed", "no_address"))
                continue
            try:
                outs += [_Out(i, m) for m in self._messages(batch, r, profile or {"user_id": r.user_id}, plan,
                                                            addresses)]
            except (RenderError, ValueError) as exc:
                reason = f"render_error: {exc}"
                report.events.append(self._plain_event(batch, r, "failed", reason))
                report.dead.append(self._dead(batch, raw, r, reason))
        results, attempts, halted = await self._deliver(batch, outs, ledger_key)
        report.sends = sum(attempts)
        per_user: dict[int, list[int]] = {}
        for k, out in enumerate(outs):
            per_user.setdefault(out.index, []).append(k)
        if halted is not None:
            # Paused or cancelled mid-batch: whoever got nothing yet is held (paused) or dropped (cancelled).
            untouched = [i for i, ks in per_user.items() if all(attempts[k] == 0 for k in ks)]
            for i in untouched:
                del per_user[i]
            await self._halt(batch, [batch.recipients[i] for i in untouched], halted, report)
        for i, ks in per_user.items():
            r = batch.recipients[i]
            result = combine([results[k] for k in ks])
            tries = max(attempts[k] for k in ks)
            event = outcome_event(batch, r, self.channel, result, tries, plan.unit_cost)
            report.events.append(event)
            if result.outcome != SENT:
                report.dead.append(self._dead(batch, raw, r, event.reason or result.outcome))

    # -- rendering -----------------------------------------------------------------------------
    def _messages(self, batch: MessageBatch, r: Recipient, profile: Mapping[str, Any], plan: SendPlan,
                  addresses: list[str]) -> list[Message]:
        mid = message_id(batch.campaign_id, r.user_id, self.channel, batch.step)
        mid_s = str(mid)
        unsubscribe = ""
        token = None
        if self.channel in ("email", "sms", "push", "in_app"):
            token = make_unsubscribe_token(self.signing_key, r.user_id, self.channel, batch.campaign_id)
            unsubscribe = f"{self.unsubscribe_prefix}{token}"
        system = {"message_id": mid_s, "campaign_id": batch.campaign_id, "variant": r.variant or "A",
                  "unsubscribe_url": unsubscribe}
        rendered = plan.template.render(message_variables(profile, plan.variables, system), r.language, r.variant)
        parts = rendered.parts
        headers: dict[str, str] = {}
        raw = None
        if self.channel == "email":
            headers = list_unsubscribe_headers(self.settings, token)
            if parts.get("html"):
                parts["html"] = rewrite_links(parts["html"], self.public_url, self.link_key, mid, batch.campaign_id,
                                              r.user_id, r.variant, skip_prefixes=(self.unsubscribe_prefix,))
            if self.build is not None:
                raw = self.build(addresses[0], parts, mid_s, headers)
        elif self.channel == "webhook":
            raw = parts.get("payload", "").encode()
        data = {"campaign_id": str(batch.campaign_id)} if self.channel in ("push", "in_app") else {}
        return [Message(channel=self.channel, to=to, parts=parts, message_id=mid_s, campaign_id=batch.campaign_id,
                        user_id=r.user_id, headers=headers, data=data, raw=raw) for to in addresses]

    # -- provider calls with rate and retries ----------------------------------------------------
    async def _deliver(self, batch: MessageBatch, outs: list[_Out], ledger_key: str
                       ) -> tuple[list[SendResult], list[int], str | None]:
        """Send with rate and retries; the third value is "paused"/"cancelled" if the campaign
        stopped mid-batch (messages never attempted keep ``attempts`` 0)."""
        results: list[SendResult] = [SendResult.transient("not attempted")] * len(outs)
        attempts = [0] * len(outs)
        pending = list(range(len(outs)))
        while pending:
            attempted, halted = await self._rated_round(batch, outs, pending, results, ledger_key)
            for k in attempted:
                attempts[k] += 1
            if halted is not None:
                return results, attempts, halted
            retry = [k for k in pending if results[k].outcome == TRANSIENT and self.policy.should_retry(attempts[k])]
            if not retry:
                break
            hints = [results[k].retry_after_s for k in retry if results[k].retry_after_s is not None]
            wait = self.policy.delay(max(attempts[k] for k in retry), max(hints) if hints else None)
            log.info("transient failures; retrying", stage=self.stage, campaign_id=batch.campaign_id,
                     count=len(retry), wait_s=round(wait, 3), reason=results[retry[0]].reason)
            await self.sleep(wait)
            pending = retry
        return results, attempts, None

    async def _rated_round(self, batch: MessageBatch, outs: list[_Out], pending: list[int],
                           results: list[SendResult], ledger_key: str) -> tuple[list[int], str | None]:
        """One attempt for every pending message, in chunks as the token bucket grants them.

        Campaign state is data: it is read again before every chunk (small chunks, a
        200 ms status cache), so a pause or cancel stops a batch within about a second
        even on a slow provider. Returns the messages attempted and, if the campaign
        stopped, its status.
        """
        start = 0
        while start < len(pending):
            status = await self.status.get(batch.campaign_id)
            if status in ("paused", "cancelled"):
                return pending[:start], status
            granted = await self.bucket.acquire(min(self.chunk, len(pending) - start))
            chunk = pending[start:start + granted]
            start += granted
            acks = AckWriter(self.ledger)

            def acked(i: int, answer: SendResult, chunk: list[int] = chunk) -> None:
                if answer.outcome == SENT:
                    acks.add(ledger_key, batch.recipients[outs[chunk[i]].index].user_id, answer.provider_id)

            answers = await self.adapter.send_many([outs[k].message for k in chunk], on_result=acked)
            for k, answer in zip(chunk, answers):
                results[k] = answer
            await acks.flush()
        return pending, None


# ---------------------------------------------------------------- the process-level runner


def adapter_options(settings: Settings, channel: str) -> dict[str, Any]:
    """Connection pool sizes: SMTP sessions (HERALD_SMTP_POOL_SIZE), HTTP connections (HERALD_PROVIDER_CONNECTIONS)."""
    from pipeline.channels import email_provider

    if channel == "email" and email_provider(settings) == "smtp":
        return {"pool_size": int(setting(settings, "smtp_pool_size", 8))}
    if channel in ("email", "sms", "push", "webhook"):
        return {"connections": int(setting(settings, "provider_connections", 64))}
    return {}


def send_chunk(settings: Settings, channel: str) -> int:
    """Messages per provider hand-off: small for one-message-per-call providers (a pause must
    stop them within a second), a whole request's worth for the batch email API."""
    from pipeline.channels import email_provider

    if channel == "email" and email_provider(settings) == "batch":
        return max(settings.send_chunk, 1000)
    return settings.send_chunk


async def run_sender(settings: Settings, channel: str, topic: str, emit_events: EmitEvents, emit_dead: EmitDead,
                     pool: Any) -> None:
    """Consume ``topic`` (outbox.<channel>) in group ``<app_id>.send_<channel>`` until cancelled."""
    from pipeline.channels import make_channel

    # A blocking pool: when every connection is busy a caller waits for one instead of failing.
    redis = Redis(connection_pool=BlockingConnectionPool.from_url(settings.redis_url, max_connections=64, timeout=30))
    adapter = make_channel(channel, settings, redis, **adapter_options(settings, channel))
    sender = Sender(settings, channel, redis, adapter, CampaignPlans(pool, settings, channel), PostgresProfiles(pool),
                    emit_events, emit_dead, chunk=send_chunk(settings, channel))
    delay = 0.5
    try:
        while True:
            try:
                await consume_concurrently(settings, topic, sender,
                                           int(setting(settings, "sender_batches_in_flight", 2)))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sender consumer failed; restarting", stage=sender.stage, delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)
    finally:
        await adapter.aclose()
        await redis.aclose()


class _Offsets:
    """What may be committed per partition: below the oldest batch still in flight, else past the last fetched."""

    def __init__(self) -> None:
        self.pending: dict[Any, set[int]] = {}
        self.fetched: dict[Any, int] = {}
        self.committed: dict[Any, int] = {}

    def start(self, tp: Any, offset: int) -> None:
        self.pending.setdefault(tp, set()).add(offset)
        self.fetched[tp] = max(self.fetched.get(tp, -1), offset)

    def finish(self, tp: Any, offset: int) -> None:
        self.pending.get(tp, set()).discard(offset)

    def committable(self) -> dict[Any, int]:
        out = {}
        for tp, last in self.fetched.items():
            pending = self.pending.get(tp)
            offset = min(pending) if pending else last + 1
            if offset > self.committed.get(tp, -1):
                out[tp] = offset
        return out

    def forget(self, partitions: Any) -> None:
        for tp in partitions:
            self.pending.pop(tp, None)
            self.fetched.pop(tp, None)
            self.committed.pop(tp, None)


DRAIN_S = 90.0  # < GROUP_TIMEOUTS["rebalance_timeout_ms"]
ENDS_EVERY_S = 0.25  # how often a sender asks the broker for its outbox partitions' end offsets


async def consume_concurrently(settings: Settings, topic: str, sender: Sender, in_flight: int) -> None:
    """Each outbox batch is its own task, at most ``in_flight`` at once, offsets committed behind the oldest.

    Not ``pipeline.batch_consumer``'s poll-then-wait loop: a batch waiting out a provider's
    backoff (up to ``RetryPolicy``'s bound) must not stall the batches behind it.
    At-least-once: a crash replays from the oldest unfinished batch of each
    partition, and the ledger skips what was already acknowledged. A batch whose
    processing fails (Redis or PostgreSQL down) is retried with backoff, not dropped.
    """
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    from pipeline.batch_consumer import GROUP_TIMEOUTS

    offsets = _Offsets()
    tasks: dict[asyncio.Task, Any] = {}

    async def drain() -> None:
        # Bounded well inside the rebalance timeout: a batch still waiting then (a slow
        # provider's backoff) is left to the next owner, whose ledger lookup skips what
        # this worker had acknowledged.
        if tasks:
            await asyncio.wait(list(tasks), timeout=DRAIN_S)

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):  # finish and commit before another worker takes over
            await drain()
            await commit()
            offsets.forget(revoked)

        async def on_partitions_assigned(self, assigned):
            return None

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_brokers, group_id=f"{settings.app_id}.{sender.stage}",
        client_id=f"{settings.app_id}.{sender.stage}", enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024, **GROUP_TIMEOUTS)

    async def commit() -> None:
        ready = offsets.committable()
        if ready:
            try:
                await consumer.commit(ready)
                offsets.committed.update(ready)
            except Exception as exc:  # noqa: BLE001 - a rebalance; the next owner replays, the ledger dedups
                log.warning("sender commit failed", stage=sender.stage, error=repr(exc))

    lag = QueueLag(sender.redis, sender.channel)
    slots = SenderSlots(sender.redis, sender.channel, in_flight, lag.token)

    async def one(raw: RawRecord) -> None:
        delay = 0.5
        while True:
            try:
                await sender.handle([raw])
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch failed; retrying", stage=sender.stage, partition=raw.partition,
                              offset=raw.offset, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    def done(task: asyncio.Task) -> None:
        tp, offset, _, key = tasks.pop(task)
        offsets.finish(tp, offset)
        lag.finished()
        slots.finished(key)  # its place in the gate's release window (pipeline/release_windows.py)

    async def waiting() -> int:
        """Records on the topic that this consumer has not started (end offsets asked of the broker)."""
        assigned = list(consumer.assignment())
        if not assigned:
            return 0
        ends = await consumer.end_offsets(assigned)
        count = 0
        for tp, end in ends.items():
            last = offsets.fetched.get(tp)
            position = last + 1 if last is not None else offsets.committed.get(tp)
            if position is not None:
                count += max(0, end - position)
        return count

    async def report_lag() -> None:
        every, last_ends, queued = lag.every_s, 0.0, 0
        while True:
            await asyncio.sleep(every)
            if len(tasks) >= in_flight:
                lag.saturated(min(t for _, _, t, _ in tasks.values()))
            now = time.monotonic()
            if now - last_ends >= ENDS_EVERY_S:
                last_ends = now
                try:
                    queued = await waiting()
                except Exception as exc:  # noqa: BLE001 - a broker hiccup: the other figures still count
                    log.warning("outbox backlog not read", stage=sender.stage, error=repr(exc))
                    queued = 0
            lag.queued(queued)
            lag.tick()
            slots.report()

    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    reporter = asyncio.ensure_future(report_lag())
    log.info("sender consumer started", topic=topic, stage=sender.stage)
    last_commit = time.monotonic()
    try:
        while True:
            free = in_flight - len(tasks)
            if free <= 0:
                await asyncio.wait(list(tasks), timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            else:
                polled = await consumer.getmany(timeout_ms=int(settings.worker_batch_seconds * 1000),
                                                max_records=free)
                for tp, messages in polled.items():
                    for m in messages:
                        offsets.start(tp, m.offset)
                        if not tasks:
                            lag.busy()
                        task = asyncio.ensure_future(one(RawRecord(m.topic, m.partition, m.offset, m.key, m.value)))
                        tasks[task] = (tp, m.offset, m.timestamp, m.key)
                        task.add_done_callback(done)
                        lag.picked_up(m.timestamp)
            if time.monotonic() - last_commit >= 0.5:
                await commit()
                last_commit = time.monotonic()
    finally:
        reporter.cancel()
        slots.withdraw()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.stop()


def faust_emitters() -> tuple[EmitEvents, EmitDead]:
    """Publishers through the worker's Faust producer; each waits for Kafka's acknowledgement,
    so a batch's offset is committed only after its events and dead letters are stored."""
    from pipeline.app import dead_letters_topic, delivery_events_topic

    async def events(partition: int, batch: DeliveryEventBatch) -> None:
        key = str(batch.events[0].campaign_id).encode() if batch.events else b"send"
        sent = await delivery_events_topic.send(key=key, value=orjson.dumps(batch.model_dump(mode="json")),
                                                partition=partition)
        await sent

    async def dead(letters: list[DeadLetter]) -> None:
        futures = [await dead_letters_topic.send(key=f"{d.source_topic}:{d.partition}:{d.offset}".encode(),
                                                 value=orjson.dumps(d.model_dump(mode="json")), partition=d.partition)
                   for d in letters]
        for future in futures:
            await future

    return events, dead

"""The send_<channel> stage's batch sender: outbox batches in, provider calls, one DeliveryEventBatch out per batch.

    outbox.<channel> ─► [send_<channel>] ─► provider ─► delivery-events (same partition)
                                       └──► dead-letters (one per message that could not be sent)

For each MessageBatch (one campaign, one channel, one partition, many users):

1. **Campaign state** (``campaign_status``: Redis ``campaign:{id}:status`` through the one
   per-process cache of pipeline/campaign_state.py, ``STATUS_CACHE_S``): paused or cancelled,
   the batch is held (once per source record) or dropped, with the events, as everywhere else
   (pipeline/control.py decides, pipeline/control_io.py's ``HeldBatches`` holds).
2. **Idempotency ledger** (one HMGET, under the batch's claim): recipients already
   acknowledged by the provider are not sent again (pipeline/send/ledger.py).
3. **Campaign and profiles**: the campaign's content for the channel, compiled once and
   cached; the recipients' profiles in ONE PostgreSQL query per batch. A recipient erased since the
   gate let them through (pipeline/erase.py: no profile, and the erased-users marker) is suppressed
   with reason ``erased``; after an in-app send, recipients erased meanwhile lose their inbox again
   (checked after the write, so an erasure either sees the entry or its marker is seen here).
4. **Render once per message to what the provider takes** (email: the MIME bytes, with
   List-Unsubscribe headers, the CAN-SPAM footer, tracked links and an open pixel), before any retry.
5. **Rate**: tokens from the channel's bucket in Redis (pipeline/send/pacing.py, one Lua call
   per chunk, shared by every worker), then the adapter's ``send_many`` (concurrent, kept-alive).
6. **Retry**: transient outcomes (timeouts, 5xx, 429 with Retry-After) are retried in process
   with exponential backoff and jitter, ``RetryPolicy.max_attempts`` in all; permanent ones are
   bounced (the recipient's fault: the gate's suppression list learns it from the event) or
   failed; both, and transients left after the last attempt, become dead letters carrying
   the batch narrowed to that recipient (``make dlq-replay`` sends them again).
7. **Events**: ONE DeliveryEventBatch for the input batch, to the batch's partition.

The decisions (``RetryPolicy``, ``message_address``, ``outcome_event``...) are
pipeline/send/decisions.py's; ``Sender`` is the I/O around them, and the worker's consumer
(pipeline/send/consumer.py) hands it one outbox record at a time. Events and dead letters
leave through the two emitters it is given (the agents pass Faust's, agents/_io.py).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from config import Settings
from pipeline import control
from pipeline import erase as erase_rules
from pipeline import erase_io
from pipeline import journey_exits
from pipeline.callbacks import callback_args
from pipeline.campaign_state import campaign_status, load_campaign
from pipeline.channels import Channel, Message, SendResult, email_provider
from pipeline.channels.base import SENT, TRANSIENT
from pipeline.channels.tracking import link_key, rewrite_links
from pipeline.codecs import RawRecord, dead_letter, decode_batch
from pipeline.control_io import HeldBatches
from pipeline.pii import CONTACT_COLUMNS, Keyring, contact_of
from pipeline.send.decisions import (
    RetryPolicy,
    SendPlan,
    channel_rate,
    combine,
    message_address,
    narrowed,
    outcome_event,
    plan_content,
    status_event,
)
from pipeline.send.ledger import AckWriter, BatchClaims, SendLedger
from pipeline.send.pacing import TokenBucket
from pipeline.signing import signing_key
from pipeline.templates import CompiledTemplate, RenderError, message_variables
from pipeline.email_footer import with_footer
from pipeline.unsubscribe import list_unsubscribe_headers, make_unsubscribe_token, unsubscribe_url
from schemas.messages import DeliveryEvent, DeliveryEventBatch, MessageBatch, Recipient, message_id
from schemas.encoding import encode, from_json
from schemas.records import DeadLetter

log = structlog.get_logger()

# ---------------------------------------------------------------- campaign definition


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
            journey_id=campaign.journey_id,
        )


# ---------------------------------------------------------------- profiles

PROFILE_COLUMNS = (f"user_id, {CONTACT_COLUMNS}, first_name, last_name, country, language, timezone, attributes,"
                   " push_tokens")


class PostgresProfiles:
    """The recipients' profiles, one query per batch, their addresses decrypted (pipeline/pii.py)."""

    def __init__(self, pool: Any, keyring: Keyring) -> None:
        self.pool = pool
        self.keyring = keyring

    async def fetch(self, user_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        if not user_ids:
            return {}
        rows = await self.pool.fetch(
            f"SELECT {PROFILE_COLUMNS} FROM users WHERE user_id = ANY($1::bigint[])", list(user_ids))
        profiles = {}
        for row in rows:
            profile = dict(row)
            profile["email"], profile["phone"] = contact_of(self.keyring, row)
            del profile["email_enc"], profile["phone_enc"]
            profile["attributes"] = from_json(profile["attributes"]) or {}
            profile["push_tokens"] = from_json(profile["push_tokens"]) or []
            profiles[profile["user_id"]] = profile
        return profiles


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
        self.held = HeldBatches(redis)
        self.chunk = chunk
        # Batches of one poll processed at once when ``handle`` is called directly; the worker's
        # consumer (consume_concurrently) hands over one batch at a time and bounds them itself.
        self.in_flight = asyncio.Semaphore(batches_in_flight or settings.sender_batches_in_flight)
        self.sleep = sleep
        key = signing_key(settings)
        self.signing_key = key
        self.erase_key = erase_rules.marker_key(key)
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
        status = await campaign_status(self.redis, batch.campaign_id)
        if control.halts(status):
            source = control.held_source(raw.topic, raw.partition, raw.offset)
            await self.held.halt(batch.campaign_id, status, source, raw.value or b"")
            report.events = self._halted_events(batch, batch.recipients, status)
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

    async def _halt(self, batch: MessageBatch, raw: RawRecord, recipients: list[Recipient], status: str,
                    report: BatchReport) -> None:
        """Hold (paused) or drop (cancelled) the recipients of ``batch`` that were not sent to."""
        if not recipients:
            return
        rest = batch.model_copy(update={"recipients": recipients})
        source = control.held_source(raw.topic, raw.partition, raw.offset, "unsent")
        await self.held.halt(batch.campaign_id, status, source, encode(rest))
        report.events += self._halted_events(batch, recipients, status)

    def _halted_events(self, batch: MessageBatch, recipients: list[Recipient], status: str) -> list[DeliveryEvent]:
        return [DeliveryEvent.model_validate(e) for e in control.halted_events(
            batch.campaign_id, batch.step, [(r.user_id, r.variant) for r in recipients], [self.channel], status)]

    def _plain_event(self, batch: MessageBatch, r: Recipient, status: str, reason: str | None) -> DeliveryEvent:
        return status_event(batch, r, self.channel, status, reason)

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
        if plan.journey_id is not None:  # a goal reached since this was queued: not sent (pipeline/journey_exits.py)
            gone = await journey_exits.exited(self.redis, plan.journey_id, batch.step,
                                              [batch.recipients[i].user_id for i in todo])
            if gone:
                report.events += [self._plain_event(batch, batch.recipients[i], "suppressed", "journey_exit")
                                  for i in todo if batch.recipients[i].user_id in gone]
                todo = [i for i in todo if batch.recipients[i].user_id not in gone]
                if not todo:
                    return
        needs_profile = self.channel != "webhook" or bool(plan.template.content.parts)
        profiles = await self.profiles.fetch([batch.recipients[i].user_id for i in todo]) if needs_profile else {}
        # Erased since the gate: only a user without a profile can be (the erasure deletes it first).
        erased = await self._erased([batch.recipients[i].user_id for i in todo
                                     if batch.recipients[i].user_id not in profiles])
        if erased:
            report.events += [self._plain_event(batch, batch.recipients[i], "suppressed", erase_rules.ERASED_REASON)
                              for i in todo if batch.recipients[i].user_id in erased]
            todo = [i for i in todo if batch.recipients[i].user_id not in erased]
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
        await self._forget_erased(outs, results)
        per_user: dict[int, list[int]] = {}
        for k, out in enumerate(outs):
            per_user.setdefault(out.index, []).append(k)
        if halted is not None:
            # Paused or cancelled mid-batch: whoever got nothing yet is held (paused) or dropped (cancelled).
            untouched = [i for i, ks in per_user.items() if all(attempts[k] == 0 for k in ks)]
            for i in untouched:
                del per_user[i]
            await self._halt(batch, raw, [batch.recipients[i] for i in untouched], halted, report)
        for i, ks in per_user.items():
            r = batch.recipients[i]
            result = combine([results[k] for k in ks])
            tries = max(attempts[k] for k in ks)
            event = outcome_event(batch, r, self.channel, result, tries, plan.unit_cost)
            report.events.append(event)
            if result.outcome != SENT:
                report.dead.append(self._dead(batch, raw, r, event.reason or result.outcome))

    async def _erased(self, user_ids: list[int]) -> set[int]:
        if not user_ids:
            return set()
        return set(await erase_io.erased_markers(self.profiles.pool, self.erase_key, user_ids))

    async def _forget_erased(self, outs: list[_Out], results: list[SendResult]) -> None:
        """A provider that keeps the message with us (the in-app inbox) forgets recipients erased while it
        was written: the marker is read after the write, so an erasure racing it is seen one way or the other."""
        forget = getattr(self.adapter, "forget", None)
        if forget is None:
            return
        sent = sorted({out.message.user_id for out, result in zip(outs, results) if result.outcome == SENT})
        gone = await self._erased(sent)
        if gone:
            await forget(sorted(gone))

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
            parts = with_footer(parts, self.settings.sender_postal_address, unsubscribe)  # CAN-SPAM
            if parts.get("html"):
                parts["html"] = rewrite_links(parts["html"], self.public_url, self.link_key, mid, batch.campaign_id,
                                              r.user_id, r.variant, skip_prefixes=(self.unsubscribe_prefix,),
                                              issued_at=int(time.time()))
            if self.build is not None:
                raw = self.build(addresses[0], parts, mid_s, headers)
        elif self.channel == "webhook":
            raw = parts.get("payload", "").encode()
        data = {"campaign_id": str(batch.campaign_id)} if self.channel in ("push", "in_app") else {}
        callback = callback_args(mid_s, batch.campaign_id, r.user_id, self.channel, r.variant, batch.step)
        return [Message(channel=self.channel, to=to, parts=parts, message_id=mid_s, campaign_id=batch.campaign_id,
                        user_id=r.user_id, headers=headers, data=data, raw=raw, callback=callback)
                for to in addresses]

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
        ``STATUS_CACHE_S`` status cache), so a pause or cancel stops a batch within about a second
        even on a slow provider. Returns the messages attempted and, if the campaign
        stopped, its status.
        """
        start = 0
        while start < len(pending):
            status = await campaign_status(self.redis, batch.campaign_id)
            if control.halts(status):  # paused, cancelled or expired (pipeline.control)
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


# ---------------------------------------------------------------- provider options


def adapter_options(settings: Settings, channel: str) -> dict[str, Any]:
    """Connection pool sizes: SMTP sessions (HERALD_SMTP_POOL_SIZE), HTTP connections (HERALD_PROVIDER_CONNECTIONS)."""
    if channel == "email" and email_provider(settings) == "smtp":
        return {"pool_size": settings.smtp_pool_size}
    if channel in ("email", "sms", "push", "webhook"):
        return {"connections": settings.provider_connections}
    return {}


def send_chunk(settings: Settings, channel: str) -> int:
    """Messages per provider hand-off: small for one-message-per-call providers (a pause must
    stop them within a second), a whole request's worth for the batch email API."""
    if channel == "email" and email_provider(settings) == "batch":
        return max(settings.send_chunk, 1000)
    return settings.send_chunk

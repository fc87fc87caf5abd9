"""gate: message-requests → outbox.<channel> + delivery-events.

Input: ``message-requests`` (``MessageBatch``, channel None: every channel of the campaign).
Output, per batch and channel, on the batch's partition: ONE ``MessageBatch`` of the
released recipients to ``outbox.<channel>`` and ONE ``DeliveryEventBatch`` to
``delivery-events`` with queued / suppressed(reason) / deferred / held / cancelled.
Pacing: a batch to be released waits while the senders of one of its channels say a batch
released now would wait over ``gate_pace_lag_s`` for them, then for a place in the channel's
release window (pipeline/release_windows.py: batches released and not finished, at most 1.5 per sender
slot), so the backlog of a big launch stays in message-requests and a released message
reaches its provider within seconds. A paused or cancelled campaign's batch does not wait:
it is held or dropped at once.
Lanes: batches run in order within a lane, one lane per (partition, campaign), so a campaign
whose channel is behind waits without holding the other campaigns' batches read after it
(an SMS campaign at its provider's rate must not hold an email campaign's release). The gate
work itself (state read, decisions, state write) is one batch at a time per partition (its users'
state is the partition's own); the pacing waits overlap. A record is acknowledged once it and every earlier record of its
partition are done (``InOrderAcks``), so a crash replays what was waiting, and a replay is
idempotent.
Side effects: the gate's tables (tables/gate_state.py, a few keys per batch); Redis
``campaign:{id}:spend`` (one Lua call per batch), ``campaign:{id}:held`` (paused),
``gate:deferred`` (quiet hours, and each recipient's local hour when the campaign has
``delivery.local_time``; agents/release_deferred.py sends them when due).

The decisions are pipeline/gate.py's; this loop only fetches state and emits.
A record that fails validation is dead-lettered; a store that is down blocks the
stream (retried with backoff) rather than dropping work.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
import time
from collections.abc import Callable
from datetime import datetime, timezone

import asyncpg
import orjson
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from agents._io import emit_events, send_dead_letters
from pipeline import control
from pipeline import erase as erase_rules
from pipeline import gate as gate_rules
from pipeline.app import app, clients, message_requests_topic, outbox_topics, settings
from pipeline.codecs import RawRecord, dead_letter, explain
from pipeline.gate_io import GateIO
from pipeline.lanes import InOrderAcks, Lanes
from schemas.messages import MessageBatch
from schemas.topics import MESSAGE_REQUESTS
from tables.gate_state import gate_history, gate_preferences, gate_suppressions

log = structlog.get_logger()
stores = GateIO(settings, clients)
# A store that is down: the batch is tried again whole, after a pause. Anything else dead-letters it,
# asyncpg's DataError too (bad input, an InterfaceError though it is no connection trouble).
RETRIED = (RedisError, OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


async def gate_batch(partition: int, offset: int, raw: bytes, ours: Callable[[], bool] = lambda: True) -> bool:
    """Gate one message-requests record; False if ``ours()`` said, after pacing, that the partition
    is no longer this worker's (nothing was emitted), True otherwise."""
    batch = MessageBatch.model_validate_json(raw)
    request = orjson.loads(raw)
    campaign = await stores.campaign(batch.campaign_id)
    if campaign is None:
        raise ValueError(f"campaign {batch.campaign_id} does not exist")
    channels = [batch.channel] if batch.channel else list(campaign.channels)
    variant = {r["user_id"]: r.get("variant") for r in request["recipients"]}
    uids = list(variant)
    if await _halted(batch, partition, offset, raw, channels, variant):
        return True
    # Pacing: while a channel's senders are behind, this batch (and its lane behind it) waits here;
    # a pause or cancel that came meanwhile applies to it at once.
    if await stores.pace(channels, batch.batch_id, len(uids)) and await _halted(batch, partition, offset, raw, channels, variant):
        await stores.unpace(channels, batch.batch_id)
        return True
    released: set[str] = set()
    try:
        async with _turns[partition]:
            if not ours():
                await stores.unpace(channels, batch.batch_id)
                return False
            await _release(batch, campaign, request, partition, offset, channels, variant, uids, released)
    except Exception as exc:
        if _retried(exc):
            raise  # tried again whole: the same places are taken again (a place is per batch)
        # Dead-lettered: the places of channels it released nothing on would stay taken until their
        # lease ends (flow.LEASE_S), narrowing those channels' windows meanwhile.
        await _unpace_quietly([ch for ch in channels if ch not in released], batch.batch_id)
        raise
    unreleased = [ch for ch in channels if ch not in released]
    if unreleased:
        await stores.unpace(unreleased, batch.batch_id)
    return True


def _retried(exc: BaseException) -> bool:
    return isinstance(exc, RETRIED) and not isinstance(exc, asyncpg.DataError)


async def _unpace_quietly(channels: list[str], batch_id: str) -> None:
    try:
        await stores.unpace(channels, batch_id)
    except RETRIED as exc:  # the lease gives the places back in the end
        log.warning("gate: window places not given back", batch_id=batch_id, error=repr(exc))


async def _release(batch: MessageBatch, campaign, request: dict, partition: int, offset: int, channels: list[str],
                   variant: dict[int, str | None], uids: list[int], released: set[str]) -> None:
    """Screen the batch and emit what it releases, adding to ``released`` each channel it sent an
    outbox batch to."""
    now = time.time()
    at = datetime.fromtimestamp(now, tz=timezone.utc).isoformat()

    # Read the state of every user in the batch: a few bucket keys, one Postgres query.
    buckets = gate_rules.group_by_bucket(partition, uids)
    profiles = await stores.profiles(uids)
    view = gate_rules.GateView(
        consent=_users(gate_preferences, buckets), suppressed=_users(gate_suppressions, buckets),
        history=_users(gate_history, buckets), profiles=profiles,
    )
    asks, verdicts = {}, {}
    gone = await stores.exited(campaign.journey_id, batch.step, uids) if campaign.journey_id else set()
    erased = await stores.erased(uids, profiles)  # GDPR erasures (pipeline/erase.py): never sent to
    for ch in channels:
        asks[ch] = gate_rules.Ask(batch.campaign_id, ch, batch.step, batch.category, batch.transactional,
                             f"{partition}:{offset}", now, campaign.quiet_hours_for(ch), stores.policy,
                             local=campaign.local, launched_at=batch.launched_at.timestamp())
        verdicts[ch] = gate_rules.screen(asks[ch], uids, view)
        if gone:
            verdicts[ch] = gate_rules.drop_users(verdicts[ch], gone, "journey_exit")
        if erased:
            verdicts[ch] = gate_rules.drop_users(verdicts[ch], erased, erase_rules.ERASED_REASON)
    if campaign.max_spend is not None:
        wanted = {ch: len(gate_rules.releases(v)) for ch, v in verdicts.items()}
        allowed = await stores.reserve_budget(batch.campaign_id, f"{partition}:{offset}", campaign.max_spend,
                                          {ch: campaign.unit_costs.get(ch, 0.0) for ch in channels}, wanted)
        for ch in channels:
            gate_rules.cut_to_budget(verdicts[ch], allowed[ch])

    deferred = []
    for ch in channels:
        recipients = {r["user_id"]: r for r in request["recipients"]}
        late: dict[float, list[dict]] = {}
        for v in verdicts[ch]:
            if v.status == "deferred":
                not_before = datetime.fromtimestamp(v.release_at, tz=timezone.utc).isoformat()
                late.setdefault(v.release_at, []).append({**recipients[v.user_id], "not_before": not_before})
        deferred += [(t, gate_rules.outbox_batch(request, ch, rs, f":deferred:{int(t)}")) for t, rs in late.items()]
    if deferred:
        await stores.defer(deferred)
    _record(buckets, asks, verdicts, view)
    _sweeps.step(partition, now)

    events = []
    for ch in channels:
        queued = [v.user_id for v in verdicts[ch] if v.status == "queued"]
        if queued:
            recipients = {r["user_id"]: r for r in request["recipients"]}
            out = gate_rules.outbox_batch(request, ch, [recipients[u] for u in queued])
            await outbox_topics[ch].send(key=out["batch_id"].encode(), value=orjson.dumps(out), partition=partition)
            released.add(ch)
        events += [gate_rules.delivery_event(batch.campaign_id, v.user_id, ch, batch.step, variant[v.user_id],
                                        v.status, v.reason, at) for v in verdicts[ch]]
    await emit_events(partition, events)


async def _halted(batch: MessageBatch, partition: int, offset: int, raw: bytes, channels: list[str],
                  variant: dict[int, str | None]) -> bool:
    """A paused campaign's batch is held, a cancelled one's dropped, each recipient with its event."""
    status = await stores.status(batch.campaign_id)
    if not control.halts(status):
        return False
    await stores.halt(batch.campaign_id, status, control.held_source(MESSAGE_REQUESTS.name, partition, offset), raw)
    await emit_events(partition, control.halted_events(batch.campaign_id, batch.step, variant.items(), channels, status))
    return True


def _users(table, buckets: dict[str, list[int]]) -> dict[int, dict]:
    """The entries of the batch's users in ``table``: one lookup per bucket."""
    out = {}
    for key, uids in buckets.items():
        value = table.get(key)
        if value:
            for uid in uids:
                entry = value.get(str(uid))
                if entry is not None:
                    out[uid] = entry
    return out


def _record(buckets, asks, verdicts, view) -> None:
    """Write the new dedup marks and cap windows: one table write per touched bucket."""
    changed: dict[int, dict] = {}
    history = dict(view.history)
    for ch, ask in asks.items():
        new = gate_rules.record_releases(ask, verdicts[ch], history, view.consent)
        history.update(new)
        changed.update(new)
    if not changed:
        return
    for key, uids in buckets.items():
        touched = [u for u in uids if u in changed]
        if touched:
            value = dict(gate_history.get(key) or {})
            for uid in touched:
                value[str(uid)] = changed[uid]
            gate_history[key] = value


_sweeps = gate_rules.Sweeps(gate_history, gate_preferences, stores.policy)


# The gate's state is read, decided on and written by one batch at a time per partition: its users, and
# so their state buckets, are the partition's alone, so partitions go concurrently (the release is mostly
# waits on PostgreSQL, Redis and Kafka; one lock for the whole worker held small batches ~30 ms each).
_turns: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)


def lane_of(partition: int, raw: bytes | None) -> tuple[int, object]:
    """(partition, campaign id) of a message-requests record; a record that does not say goes to the
    partition's own lane (it is dead-lettered there)."""
    try:
        return partition, orjson.loads(raw or b"").get("campaign_id")
    except (orjson.JSONDecodeError, AttributeError):
        return partition, None


@app.agent(message_requests_topic)
async def gate(stream):
    """Each record runs in its lane, and is acknowledged once it and every record read before it on
    its partition are done (``InOrderAcks``: Faust's own commit would skip a record still in its
    lane). The task a record runs in is created while the stream is on that record, so Faust's
    table writes in it go to its partition."""
    lanes, acks = Lanes(settings.gate_batches_pending), InOrderAcks()
    try:
        async for event in stream.noack().events():
            ticket = acks.track(event.message.tp, event)
            await lanes.submit(lane_of(event.message.partition, event.value),
                               functools.partial(_handle, event, acks, ticket))
    finally:
        # Stopping (or the agent restarting): what waits in a lane is not acknowledged, so it is read
        # again from the committed offset by whoever owns its partition next.
        await lanes.cancel()


async def _handle(event, acks: InOrderAcks, ticket) -> None:
    acks.finish(ticket, await _gate_one(event))


def _ours(message) -> bool:
    """Whether this worker still owns the record's partition: a batch that waited in its lane through a
    rebalance is left to the new owner, who reads it again from the committed offset."""
    return message.tp in app.consumer.assignment()


async def _gate_one(event) -> bool:
    """Gate one record: True once it is done with (released, held, dead-lettered), False when its
    partition went to another worker first."""
    message = event.message
    delay = 0.2
    while True:
        try:
            return await gate_batch(message.partition, message.offset, event.value, lambda: _ours(message))
        except (ValidationError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            # (before the retried stores: asyncpg's DataError is a ValueError too)
            reason = explain(exc) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
            raw = RawRecord(message.topic, message.partition, message.offset, event.key, event.value)
            await send_dead_letters([dead_letter(raw, "gate", reason)])
            return True
        except RETRIED as exc:
            log.warning("gate: store unavailable, retrying the batch", error=repr(exc), delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        except Exception as exc:  # a bug must not stop the stream for everybody: dead-letter it
            log.exception("gate: batch failed", partition=message.partition, offset=message.offset)
            raw = RawRecord(message.topic, message.partition, message.offset, event.key, event.value)
            await send_dead_letters([dead_letter(raw, "gate", f"{type(exc).__name__}: {exc}")])
            return True

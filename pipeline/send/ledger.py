"""The idempotency ledger: which messages a provider acknowledged, and one sender at a time per batch.

    claim:{ledger key}:{batch id}      BatchClaims: the sender working on one outbox batch
    sends:{campaign}:{ch}:{step}:{p}   SendLedger: user → provider id, then "!" once reported

A sender claims the batch, reads the ledger (one HMGET), sends only what it has no
acknowledgement for, writes each acknowledgement as the provider's answer arrives
(``AckWriter``), publishes the events, marks them reported, and releases the claim.
Keys come from schemas/keys.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence

import structlog
from redis.asyncio import Redis

from schemas.keys import claim_key, ledger_key
from schemas.messages import MessageBatch

log = structlog.get_logger()


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
        return ledger_key(batch.campaign_id, channel, batch.step, batch.partition)

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
        return claim_key(SendLedger.key(batch, channel), batch.batch_id)

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

"""pipeline.journeys_io: what advance_journeys decided is never dropped when emitting it fails. Kafka and
Redis are stand-ins here on purpose: these tests make them fail at chosen moments (the real stack's
behaviour is covered by tests/integration/pipeline/test_journeys.py)."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiokafka.errors import KafkaTimeoutError

from config import Settings
from pipeline.journeys_io import Advancer, Pending
from schemas.keys import flow_exit_key
from schemas.topics import JOURNEY_SIGNALS


class FailingProducer:
    """Accepts ``ok`` records, then fails every send (until ``ok`` is raised again)."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.sent: list[tuple[str, bytes, int]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, partition: int) -> None:
        if len(self.sent) >= self.ok:
            raise KafkaTimeoutError()
        self.sent.append((topic, value, partition))


class Clients:
    def __init__(self, producer: FailingProducer) -> None:
        self._producer = producer

    async def producer(self) -> FailingProducer:
        return self._producer


class RecordingRedis:
    """A pipeline whose first ``fails`` executions raise, as a Redis restart would."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.applied: list[tuple] = []

    def pipeline(self, transaction: bool = False) -> RecordingRedis._Pipe:
        return RecordingRedis._Pipe(self)

    class _Pipe:
        def __init__(self, redis: RecordingRedis) -> None:
            self.redis, self.ops = redis, []

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc) -> None:
            return None

        def set(self, *args, **kw) -> None:
            self.ops.append(("set", *args))

        def hincrby(self, *args) -> None:
            self.ops.append(("hincrby", *args))

        async def execute(self) -> None:
            if self.redis.fails:
                self.redis.fails -= 1
                from redis.exceptions import ConnectionError
                raise ConnectionError("Redis is restarting")
            self.redis.applied += self.ops


def _advancer(clients) -> Advancer:
    return Advancer(Settings(), clients, audience=None, table={})


def test_taking_an_interrupted_flush_back_keeps_its_outputs_first():
    later, earlier = Pending(), Pending()
    earlier.sends[(1, "mail@10", "email", 0)] += [5, 6]
    later.sends[(1, "mail@10", "email", 0)] += [7]
    later.sends[(2, "push@11", "push", 3)] += [8]
    earlier.counts[("c1", "entered")] += 2
    later.counts[("c1", "entered")] += 1
    earlier.exits[("j1", 5)] = 10
    earlier.acks.append(lambda: None)
    earlier.first_at = 1.0
    later.take_back(earlier)
    assert later.sends == {(1, "mail@10", "email", 0): [5, 6, 7], (2, "push@11", "push", 3): [8]}
    assert later.counts == Counter({("c1", "entered"): 3})
    assert later.exits == {("j1", 5): 10} and len(later.acks) == 1 and later.first_at == 1.0


def test_due_slots_whose_wake_records_were_not_sent_go_back_in_the_index():
    producer = FailingProducer(ok=1)
    advancer = _advancer(Clients(producer))
    advancer.timers.add(0, 11, 100.0)
    advancer.timers.add(1, 12, 101.0)
    advancer.timers.add(2, 13, 102.0)
    advancer.timers.add(3, 14, 10**12)  # not due
    try:
        asyncio.run(advancer.wake_due())
    except KafkaTimeoutError:
        pass
    else:
        raise AssertionError("the producer's failure must reach the timer (which logs it)")
    assert [p for _, _, p in producer.sent] == [0]
    assert len(advancer.timers) == 3 and advancer.timers.next_due() == 101.0
    producer.ok = 10
    assert asyncio.run(advancer.wake_due()) == 2
    assert [p for _, _, p in producer.sent] == [0, 1, 2] and len(advancer.timers) == 1
    assert all(topic == JOURNEY_SIGNALS.name for topic, _, _ in producer.sent)


def test_a_flush_retries_until_the_counts_are_out_then_acknowledges_once():
    redis = RecordingRedis(fails=2)

    class RedisClients:
        def redis(self):
            return redis

    advancer = _advancer(RedisClients())
    acked: list[int] = []
    advancer.pending.counts[("c7", "entered")] += 3
    advancer.pending.exits[("j2", 9)] = 4
    advancer.pending.acks.append(lambda: acked.append(1))
    asyncio.run(advancer.flush())
    assert acked == [1]
    assert redis.applied == [("set", flow_exit_key("j2", 9), 4), ("hincrby", "flow:c7:progress", "entered", 3)]
    assert not advancer.pending


def test_a_test_workers_clock_follows_the_offset_at_once():
    """A test moves the clock and at once produces an event: the worker must decide it on the moved clock."""
    from pipeline.journeys_io import FlowClock

    class OffsetRedis:
        offset: bytes | None = None

        async def get(self, key: str) -> bytes | None:
            return self.offset

    redis = OffsetRedis()

    class RedisClients:
        def redis(self):
            return redis

    clock = FlowClock(Settings(test_clock=True), RedisClients())
    before = asyncio.run(clock.now())
    redis.offset = b"86405"
    assert asyncio.run(clock.now()) - before >= 86_405
    redis.offset = None
    assert asyncio.run(clock.now()) - before < 60

"""Pacing between the gate and the senders, on the real Redis: the senders' report and the gate's wait."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.gate_io import LAG_CHECK_S, GateIO
from pipeline.send.consumer import consume_concurrently
from pipeline.send.pacing import QueueLag
from tests.helpers.kafka import produce


async def test_queue_lag_reports_the_largest_figure_of_each_tick_and_expires(pipeline_redis):
    lag = QueueLag(pipeline_redis, "pace-test", ttl_ms=300)
    lag.picked_up(int((time.time() - 2.5) * 1000))
    lag.saturated(int((time.time() - 4.0) * 1000))
    lag.picked_up(None)  # a record without a timestamp says nothing
    assert 3.9 < lag.tick() < 4.5
    await asyncio.sleep(0.05)
    assert 3.9 < float(await pipeline_redis.get("lag:pace-test")) < 4.5
    assert lag.tick() == 0.0  # nothing new: nothing written, and the figure expires
    await asyncio.sleep(0.4)
    assert await pipeline_redis.get("lag:pace-test") is None  # idle senders read as "not behind"


async def test_the_gate_sees_the_most_behind_of_several_workers(pipeline_redis):
    """Two workers' senders of one channel: one far behind, one nearly idle. The nearly idle one's
    figure does not hide the other's; the one behind can report that it caught up."""
    behind, idle = QueueLag(pipeline_redis, "pace-two"), QueueLag(pipeline_redis, "pace-two")

    async def report(lag: QueueLag, seconds: float) -> float:
        lag.picked_up(int((time.time() - seconds) * 1000))
        lag.tick()
        await lag._write
        return float(await pipeline_redis.get("lag:pace-two"))

    assert 2.9 < await report(behind, 3.0) < 3.2
    assert 2.9 < await report(idle, 0.2) < 3.2  # not hidden by the idle worker's figure
    assert 0.4 < await report(behind, 0.5) < 0.7  # its own figure, down
    assert 0.6 < await report(idle, 0.7) < 0.9  # now the larger one


def test_the_queued_estimate_is_the_backlog_over_the_finishing_rate():
    lag = QueueLag(None, "pace-test")
    lag.busy(now=100.0)
    assert lag.queued(18, now=100.3) is None  # nothing finished yet: no rate to tell
    lag.finished(now=100.4)
    lag.finished(now=100.4)
    assert lag.queued(18, now=100.5) == pytest.approx(18 * 0.5 / 2)  # 4 batches/s: the 18th starts in 4.5 s
    assert lag.queued(0, now=100.5) is None
    for t in range(20):  # a long busy run: the rate is over the last RATE_WINDOW_S only
        lag.finished(now=101.0 + t * 0.5)
    assert lag.queued(6, now=111.0) == pytest.approx(6 * 3.0 / 6)


async def test_gate_waits_while_a_channel_is_behind_and_only_then(settings, pipeline_redis):
    io = GateIO(settings.model_copy(update={"gate_pace_lag_s": 1.0}))
    await pipeline_redis.delete("lag:pace-a", "lag:pace-b")
    assert await io.pace(["pace-a", "pace-b"]) < 0.05
    await pipeline_redis.set("lag:pace-b", "0.5")  # behind, but within the target
    assert await io.pace(["pace-a", "pace-b"]) < 0.05
    await pipeline_redis.set("lag:pace-b", "7.5", px=600)
    await asyncio.sleep(LAG_CHECK_S)  # the gate reads a channel's lag at most this often
    waited = await io.pace(["pace-a", "pace-b"])
    assert 0.4 < waited < 2.0
    off = GateIO(settings.model_copy(update={"gate_pace_lag_s": 0.0}))
    await pipeline_redis.set("lag:pace-b", "7.5", px=600)
    assert await off.pace(["pace-b"]) == 0.0
    await io.redis.aclose()


@dataclass
class SlowSender:
    """What consume_concurrently needs of a Sender; each batch takes ``batch_s`` (a provider's backoff)."""
    redis: object
    batch_s: float
    channel: str = field(default_factory=lambda: f"pace-{uuid.uuid4().hex[:8]}")
    done: list = field(default_factory=list)

    @property
    def stage(self) -> str:
        return f"send_{self.channel}"

    async def handle(self, records) -> None:
        await asyncio.sleep(self.batch_s)
        self.done.extend(r.offset for r in records)


async def _lag_while_consuming(settings, pipeline_redis, sender: SlowSender, batches: int,
                               in_flight: int) -> list[tuple[float, float]]:
    """Consume ``batches`` one-record batches of a fresh topic with ``in_flight`` slots: ``(seconds since
    they were produced, lag:{channel})`` sampled every 50 ms until the last batch's end."""
    topic = f"pace-test-{sender.channel}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    consumer = asyncio.ensure_future(consume_concurrently(settings, topic, sender, in_flight))
    try:
        await produce(settings.kafka_brokers, topic, [(b"k", b"{}")])  # the group is joined once this is done
        deadline = time.monotonic() + 60
        while not sender.done:
            assert time.monotonic() < deadline, "the consumer never finished a batch"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # the warm-up's figure expired
        await produce(settings.kafka_brokers, topic, [(b"k", b"{}")] * batches)
        produced = time.monotonic()
        seen = []
        while len(sender.done) < 1 + batches:
            assert time.monotonic() < deadline, "the consumer did not finish its batches"
            raw = await pipeline_redis.get(f"lag:{sender.channel}")
            seen.append((time.monotonic() - produced, float(raw) if raw else 0.0))
            await asyncio.sleep(0.05)
        return seen
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def test_a_batch_in_flight_with_nothing_queued_behind_it_is_not_behind(settings, pipeline_redis):
    """A batch riding out a provider's backoff for seconds, alone: pacing must not hold the gate
    (and the other channels behind it in the gate's partitions) for that."""
    sender = SlowSender(pipeline_redis, batch_s=3.0)
    lags = await _lag_while_consuming(settings, pipeline_redis, sender, batches=1, in_flight=4)
    assert lags[-1][0] > 2.5  # the batch was in flight that long
    assert max(lag for _, lag in lags) < 0.5, lags


async def test_batches_waiting_for_a_busy_sender_are_behind_at_once(settings, pipeline_redis):
    """Both slots busy for 2 s with four batches queued: the channel reads as behind before
    any of those is picked up (at ~1 s, not at the first pickup after 2 s), and the figure
    grows with the wait."""
    sender = SlowSender(pipeline_redis, batch_s=2.0)
    lags = await _lag_while_consuming(settings, pipeline_redis, sender, batches=6, in_flight=2)
    first_over = next(t for t, lag in lags if lag > 1.0)
    assert first_over < 1.7, lags  # within the first round of batches, not after it
    assert max(lag for _, lag in lags) > 3.0, lags


async def test_a_burst_reads_as_behind_before_any_batch_has_waited_that_long(settings, pipeline_redis):
    """Twenty 0.4 s batches on two slots: the 20th will wait ~4 s. The channel reads as behind
    within the first round (the backlog over the finishing rate), long before a picked-up
    batch has waited 1 s (~1.2 s in) and although no batch is ever 1 s in flight."""
    sender = SlowSender(pipeline_redis, batch_s=0.4)
    lags = await _lag_while_consuming(settings, pipeline_redis, sender, batches=20, in_flight=2)
    first_over = next(t for t, lag in lags if lag > 1.0)
    assert first_over < 0.9, lags
    assert max(lag for _, lag in lags) > 2.5, lags

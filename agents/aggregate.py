"""aggregate: delivery-events → live counters in Redis, Cassandra ``message_log``, campaign completion.

Input: ``delivery-events`` (``DeliveryEventBatch``, one record per stage batch, partition of its users).
Output: ``dead-letters`` for records that fail validation.
Side effects:
- Redis ``campaign:{id}:metrics`` (+ ``:<channel>`` and ``:<channel>:<variant>``): one Lua call per
  consumed batch folds every event, counting each (message, status) once ever (``pipeline.metrics``),
  so replays of this consumer or of any upstream stage never double count.
- Cassandra ``message_log``: one row per message and status it reached (sent, delivered, bounced, failed,
  suppressed, cancelled, opened, clicked, ...; not the transient queued, held and deferred), unlogged
  batches per (campaign, day, shard); a replay rewrites the same rows. A consumer group of its own, so a slow Cassandra delays the log,
  never the live counters.
- Cassandra ``campaign_metrics``: every ``metrics_persist_s``, the hours whose counts changed, as absolute
  values (pipeline/aggregate_io.py ``HourlyMetrics``).
- Completion: when ``accounted`` (messages with an outcome) reaches ``campaign:{id}:expected`` while the
  campaign is active, PostgreSQL campaigns.status becomes ``completed`` (with an audit row by "herald"),
  then Redis ``campaign:{id}:status``. Checked after every fold and swept every second, because explode
  may write ``expected`` after the last event was folded.

Both consumers are bulk consumers (``pipeline.batch_consumer``): a Faust stream costs ~200 µs a record, and the
fold wants many stage batches per Redis call. Exactly-once in effect though read at least once: a
replayed batch finds its (message, status) pairs already counted and rewrites the same log rows.
The decisions are pipeline/metrics.py's and pipeline/aggregate.py's; the store calls pipeline/aggregate_io.py's.
"""

from __future__ import annotations

import structlog

from agents._io import send_dead_letters
from pipeline import aggregate as decide
from pipeline.aggregate_io import AggregateIO
from pipeline.app import app, clients, settings
from pipeline.batch_consumer import IDEMPOTENT_TIMEOUTS, run_forever
from pipeline.codecs import RawRecord, decode_batch
from schemas.messages import DeliveryEventBatch
from schemas.topics import DELIVERY_EVENTS

log = structlog.get_logger()
stores = AggregateIO(clients, settings.cassandra_keyspace)


async def fold_batch(raws: list[RawRecord]) -> None:
    decoded = decode_batch(raws, DeliveryEventBatch, stage="aggregate")
    touched = await stores.folder.fold(decide.batch_events(decoded.records))
    await send_dead_letters(list(decoded.dead))
    await stores.completion.check(touched)


async def log_batch(raws: list[RawRecord]) -> None:
    await stores.write_log([raw.value for raw in raws])


@app.task
async def aggregate_metrics() -> None:
    await run_forever(settings, DELIVERY_EVENTS.name, "aggregate", fold_batch, IDEMPOTENT_TIMEOUTS)


@app.task
async def log_messages() -> None:
    await run_forever(settings, DELIVERY_EVENTS.name, "message_log", log_batch, IDEMPOTENT_TIMEOUTS)


@app.timer(interval=settings.metrics_persist_s)
async def persist_hourly_metrics() -> None:
    """Hours whose counts changed → Cassandra ``campaign_metrics`` (absolute values: at least once is enough)."""
    try:
        await stores.hourly.flush()
    except Exception:  # a down store: the hours went back in the set, the next tick copies them
        log.exception("hourly metrics not copied to Cassandra")


@app.timer(interval=1.0)
async def complete_campaigns() -> None:
    try:
        await stores.completion.sweep()
    except Exception:  # a down store: the next tick tries again
        log.exception("completion sweep failed")

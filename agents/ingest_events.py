"""ingest_events: user-events → Cassandra ``user_events``.

Input: ``user-events`` (JSON ``UserEvent``, keyed by user_id).
Output: ``dead-letters`` for records that fail validation or that the store refuses.
Side effects: writes each batch to Cassandra as one unlogged batch per (user, month)
partition; event ids are stable, so a replay after a crash overwrites, never duplicates.
"""

from agents._io import raw_records, send_dead_letters
from pipeline.app import app, settings, user_events_topic
from pipeline.codecs import decode_batch
from pipeline.resources import Resources
from pipeline.sinks import store_batch
from pipeline.stores.cassandra import EventWriter
from schemas.records import UserEvent

resources = Resources(settings)


@app.agent(user_events_topic)
async def ingest_events(stream):
    writer = EventWriter(await resources.cassandra(), settings.cassandra_keyspace)
    async for events in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_seconds):
        decoded = decode_batch(raw_records(events), UserEvent, stage="ingest_events")
        refused = await store_batch(decoded, writer.write, "ingest_events")
        await send_dead_letters(decoded.dead + refused)

"""ingest_events: user-events → Cassandra ``user_events``.

Input: ``user-events`` (JSON ``UserEvent``, keyed by user_id).
Output: ``dead-letters`` for records that fail validation or that the store refuses.
Side effects: writes each batch to Cassandra as one unlogged batch per (user, month)
partition; event ids are stable, so a replay after a crash overwrites, never
duplicates. Events of an erased user are dropped (pipeline/erase.py). Runs as a bulk
consumer task of the Faust worker (see ``pipeline.batch_consumer``).
"""

from agents._io import send_dead_letters
from pipeline import erase
from pipeline.erase_io import drop_erased
from pipeline.signing import signing_key
from pipeline.app import app, clients, settings
from schemas.topics import USER_EVENTS
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, decode_batch
from pipeline.sinks import store_batch
from pipeline.stores.cassandra import EventWriter
from schemas.records import UserEvent

_writer: EventWriter | None = None


async def ingest_batch(raws: list[RawRecord]) -> None:
    global _writer
    if _writer is None:
        _writer = EventWriter(await clients.cassandra(), settings.cassandra_keyspace)
    decoded = decode_batch(raws, UserEvent, stage="ingest_events")
    decoded = await drop_erased(await clients.postgres(), erase.marker_key(signing_key(settings)), decoded,
                                "ingest_events")
    refused = await store_batch(decoded, _writer.write, "ingest_events")
    await send_dead_letters(decoded.dead + refused)


@app.task
async def ingest_events() -> None:
    await run_forever(settings, USER_EVENTS.name, "ingest_events", ingest_batch)

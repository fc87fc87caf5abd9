"""ingest_profiles: user-profiles → PostgreSQL ``users``.

Input: ``user-profiles`` (JSON ``UserProfile``, keyed by user_id, compacted).
Output: ``dead-letters`` for records that fail validation or that the store refuses.
Side effects: upserts users in PostgreSQL, one statement per batch; offsets are
committed only after the batch is stored (``take_events`` acks after the loop body).
"""

from agents._io import raw_records, send_dead_letters
from pipeline.app import app, settings, user_profiles_topic
from pipeline.codecs import decode_batch
from pipeline.resources import Resources
from pipeline.sinks import store_batch
from pipeline.stores.postgres import upsert_users
from schemas.records import UserProfile

resources = Resources(settings)


@app.agent(user_profiles_topic)
async def ingest_profiles(stream):
    pool = await resources.postgres()
    async for events in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_seconds):
        decoded = decode_batch(raw_records(events), UserProfile, stage="ingest_profiles")
        refused = await store_batch(decoded, lambda profiles: upsert_users(pool, profiles), "ingest_profiles")
        await send_dead_letters(decoded.dead + refused)

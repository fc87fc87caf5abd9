"""ingest_profiles: user-profiles → PostgreSQL ``users``.

Input: ``user-profiles`` (JSON ``UserProfile``, keyed by user_id, compacted).
Output: ``dead-letters`` for records that fail validation or that the store refuses.
Side effects: upserts users in PostgreSQL, one statement per batch. A tombstone (an erasure's,
pipeline/erase.py: the API already deleted the row) is skipped; a profile of an erased user is
dropped unless it is a new sign-up, which clears the erasure's marker. Runs as a bulk
consumer task of the Faust worker (see ``pipeline.batch_consumer`` for why); offsets are
committed only after the batch is stored. Consent a profile carries is recorded in the user's preferences
and published to ``preference-updates`` (pipeline/preferences_store.py) before the commit.
"""

from agents._io import send_dead_letters
from pipeline import erase
from pipeline.erase_io import drop_erased
from pipeline.signing import signing_key
from pipeline.app import app, clients, settings
from schemas.topics import USER_PROFILES
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, decode_batch
from pipeline.pii_keys import pii_keyring
from pipeline.preferences_store import apply_profile_consent
from pipeline.sinks import store_batch
from pipeline.stores.postgres import upsert_users
from schemas.records import UserProfile

keyring = pii_keyring(settings)


async def ingest_batch(raws: list[RawRecord]) -> None:
    pool = await clients.postgres()
    decoded = decode_batch([r for r in raws if r.value], UserProfile, stage="ingest_profiles")
    decoded = await drop_erased(pool, erase.marker_key(signing_key(settings)), decoded, "ingest_profiles")
    refused = await store_batch(decoded, lambda profiles: upsert_users(pool, keyring, profiles), "ingest_profiles")
    gone = {(d.partition, d.offset) for d in refused}
    stored = [p for p, raw in zip(decoded.records, decoded.sources) if (raw.partition, raw.offset) not in gone]
    await apply_profile_consent(pool, await clients.producer(), settings.opt_in_channels, stored)
    await send_dead_letters(decoded.dead + refused)


@app.task
async def ingest_profiles() -> None:
    await run_forever(settings, USER_PROFILES.name, "ingest_profiles", ingest_batch)

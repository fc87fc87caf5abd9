"""PostgreSQL writes the pipeline makes: batched, one round trip per batch."""

from __future__ import annotations

import asyncpg
import orjson

from pipeline.pii import Keyring, contact_columns
from schemas.records import UserProfile

# One statement for the whole batch: unnest the columns and upsert. A profile only
# replaces a stored one that is not newer, so a replayed old record changes nothing.
# Addresses are stored encrypted with their blind indexes (pipeline/pii.py), the plaintext
# columns emptied.
_UPSERT_USERS = """
INSERT INTO users AS u (user_id, email_enc, email_idx, phone_enc, phone_idx, first_name, last_name, country,
                        language, timezone, attributes, push_tokens, profile_updated_at, created_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::text[], $11::jsonb[], $12::jsonb[], $13::timestamptz[],
                     $14::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
    email = NULL, phone = NULL, email_enc = EXCLUDED.email_enc, email_idx = EXCLUDED.email_idx,
    phone_enc = EXCLUDED.phone_enc, phone_idx = EXCLUDED.phone_idx, first_name = EXCLUDED.first_name,
    last_name = EXCLUDED.last_name, country = EXCLUDED.country, language = EXCLUDED.language,
    timezone = EXCLUDED.timezone, attributes = EXCLUDED.attributes,
    push_tokens = EXCLUDED.push_tokens, profile_updated_at = EXCLUDED.profile_updated_at,
    updated_at = now()
WHERE u.profile_updated_at <= EXCLUDED.profile_updated_at
"""


def latest_per_user(profiles: list[UserProfile]) -> list[UserProfile]:
    """Keep one profile per user, the newest (a batch may hold several of one user)."""
    latest: dict[int, UserProfile] = {}
    for profile in profiles:
        seen = latest.get(profile.user_id)
        if seen is None or seen.updated_at <= profile.updated_at:
            latest[profile.user_id] = profile
    return list(latest.values())


async def upsert_users(pool: asyncpg.Pool, keyring: Keyring, profiles: list[UserProfile]) -> int:
    rows = latest_per_user(profiles)
    if not rows:
        return 0
    contact = [contact_columns(keyring, p.email, p.phone) for p in rows]
    columns = (
        [p.user_id for p in rows],
        *([c[name] for c in contact] for name in ("email_enc", "email_idx", "phone_enc", "phone_idx")),
        [p.first_name for p in rows],
        [p.last_name for p in rows],
        [p.country for p in rows],
        [p.language for p in rows],
        [p.timezone for p in rows],
        [orjson.dumps(p.attributes, default=str).decode() for p in rows],
        [orjson.dumps(p.push_tokens).decode() for p in rows],
        [p.updated_at for p in rows],
        [p.created_at or p.updated_at for p in rows],
    )
    await pool.execute(_UPSERT_USERS, *columns)
    return len(rows)

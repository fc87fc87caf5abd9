"""PostgreSQL writes the pipeline makes: batched, one round trip per batch."""

from __future__ import annotations

import asyncpg
import orjson

from schemas.records import UserProfile

# One statement for the whole batch: unnest the columns and upsert. A profile only
# replaces a stored one that is not newer, so a replayed old record changes nothing.
_UPSERT_USERS = """
INSERT INTO users AS u (user_id, email, phone, first_name, last_name, country, language,
                        timezone, attributes, push_tokens, profile_updated_at, created_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::jsonb[], $10::jsonb[], $11::timestamptz[],
                     $12::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
    email = EXCLUDED.email, phone = EXCLUDED.phone, first_name = EXCLUDED.first_name,
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


async def upsert_users(pool: asyncpg.Pool, profiles: list[UserProfile]) -> int:
    rows = latest_per_user(profiles)
    if not rows:
        return 0
    columns = (
        [p.user_id for p in rows],
        [p.email for p in rows],
        [p.phone for p in rows],
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

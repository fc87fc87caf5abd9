"""Users' preferences in PostgreSQL ``user_preferences``, and consent that upstream profiles carry.

The API (api/preferences.py) changes one user at a time under the per-user advisory lock in
``LOCK_SPACE``; ``apply_profile_consent`` does the same for a batch of profiles from ``user-profiles``
(agents/ingest_profiles.py): the users' locks in id order, their rows ``FOR UPDATE``, each consent
applied unless the one recorded is newer (``schemas.preferences.upstream_consent``: a STOP keyword
after the sign-up form is not undone when the form's profile is read again), one audit row per change,
and the whole new state published to ``preference-updates`` (acks=all) before the transaction commits,
so that the gate learns it in the order of the changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson

from pipeline import audit
from schemas.preferences import CHANNELS, Preferences, preference_key, stored_preferences, upstream_consent
from schemas.records import UserProfile
from schemas.topics import PREFERENCE_UPDATES

LOCK_SPACE = 0x70726566  # "pref": the two-int advisory lock space, apart from the one-bigint locks
COLUMNS = (
    "email_enabled, sms_enabled, push_enabled, in_app_enabled,"
    " frequency_cap, categories, consent, updated_at, version"
)
UPSTREAM_ACTOR = "upstream"  # the audit trail's actor for consent that came with a profile


def decoded(row: asyncpg.Record | None) -> dict[str, Any] | None:
    """A ``user_preferences`` row with its JSON columns decoded."""
    if row is None:
        return None
    values = dict(row)
    for column in ("frequency_cap", "categories", "consent"):
        values[column] = orjson.loads(values[column]) if values[column] else {}
    return values


def stored_values(prefs: Preferences) -> list[Any]:
    """The values of ``COLUMNS`` for ``prefs`` (only explicit consent decisions are stored)."""
    explicit_consent = {c: v.model_dump(mode="json") for c, v in prefs.consent.items() if v.source != "default"}
    return [
        *(prefs.enabled(channel) for channel in CHANNELS),
        orjson.dumps(prefs.frequency_cap).decode(),
        orjson.dumps(prefs.categories).decode(),
        orjson.dumps(explicit_consent).decode(),
        prefs.updated_at,
        prefs.version,
    ]


async def apply_profile_consent(pool: asyncpg.Pool, producer, opt_in: Collection[str],
                                profiles: Iterable[UserProfile]) -> list[Preferences]:
    """Record the consent the profiles carry (the newest profile of each user); returns the users'
    preferences that changed. The profiles' users exist (the caller stored them first)."""
    newest: dict[int, UserProfile] = {}
    for profile in profiles:
        if profile.consent and (profile.user_id not in newest or profile.updated_at >= newest[profile.user_id].updated_at):
            newest[profile.user_id] = profile
    if not newest:
        return []
    ids = sorted(newest)
    now = datetime.now(timezone.utc)
    changed: list[tuple[Preferences, Preferences]] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashint8(u)) FROM unnest($2::bigint[]) AS u ORDER BY u",
                           LOCK_SPACE, ids)
        rows = {r["user_id"]: r for r in await conn.fetch(
            f"SELECT user_id, {COLUMNS} FROM user_preferences WHERE user_id = ANY($1::bigint[]) FOR UPDATE", ids)}
        for user_id in ids:
            before = stored_preferences(user_id, decoded(rows.get(user_id)), opt_in)
            profile = newest[user_id]
            after = upstream_consent(before, profile.consent or {}, profile.updated_at, now)
            if after is not before:
                changed.append((before, after))
        if not changed:
            return []
        await conn.executemany(
            f"INSERT INTO user_preferences (user_id, {COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9, $10)"
            f" ON CONFLICT (user_id) DO UPDATE SET ({COLUMNS}) = (EXCLUDED.email_enabled, EXCLUDED.sms_enabled,"
            " EXCLUDED.push_enabled, EXCLUDED.in_app_enabled, EXCLUDED.frequency_cap, EXCLUDED.categories,"
            " EXCLUDED.consent, EXCLUDED.updated_at, EXCLUDED.version)",
            [(after.user_id, *stored_values(after)) for _, after in changed])
        await audit.record_many(conn, UPSTREAM_ACTOR, "consent", "user_preferences",
                                [(after.user_id, before.model_dump(mode="json"), after.model_dump(mode="json"))
                                 for before, after in changed])
        sent = [await producer.send(PREFERENCE_UPDATES.name, orjson.dumps(after.to_update().model_dump(mode="json")),
                                    key=preference_key(after.user_id)) for _, after in changed]
        for future in sent:
            await future
    return [after for _, after in changed]

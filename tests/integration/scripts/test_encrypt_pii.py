"""The backfill encrypts rows written before migration 012, and the readers still find their addresses."""

from __future__ import annotations

import random

import asyncpg

from pipeline.pii import contact_of, email_index, phone_index
from pipeline.pii_keys import pii_keyring
from scripts.encrypt_pii import encrypt_unsubscribes, encrypt_users


async def test_plaintext_rows_are_encrypted_once_and_read_the_same(settings):
    keyring = pii_keyring(settings)
    base = random.randrange(10**12, 9 * 10**15)
    ids = [base, base + 1, base + 2]
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=2)
    try:
        await pool.executemany("INSERT INTO users (user_id, email, phone) VALUES ($1, $2, $3)",
                               [(ids[0], f"old{base}@example.test", f"+1555{base % 10**7:07d}"),
                                (ids[1], f"only{base}@example.test", None), (ids[2], None, None)])
        await pool.execute("INSERT INTO unsubscribes (user_id, email, channel, source)"
                           " VALUES ($1, $2, 'email', 'api')", ids[1], f"only{base}@example.test")
        cols = "user_id, email_enc, phone_enc, email, phone"
        before = {r["user_id"]: contact_of(keyring, r)
                  for r in await pool.fetch(f"SELECT {cols} FROM users WHERE user_id = ANY($1)", ids)}

        assert await encrypt_users(pool, keyring, base, base + 2, batch=1) == 2
        assert await encrypt_unsubscribes(pool, keyring, base, base + 2) == 1
        assert await encrypt_users(pool, keyring, base, base + 2) == 0  # nothing left to do

        rows = await pool.fetch("SELECT * FROM users WHERE user_id = ANY($1) ORDER BY user_id", ids)
        assert all(r["email"] is None and r["phone"] is None for r in rows)
        assert {r["user_id"]: contact_of(keyring, r) for r in rows} == before
        assert await pool.fetchval("SELECT user_id FROM users WHERE email_idx = $1",
                                   email_index(keyring, f"OLD{base}@example.test")) == ids[0]
        assert await pool.fetchval("SELECT user_id FROM users WHERE phone_idx = $1",
                                   phone_index(keyring, f"+1555{base % 10**7:07d}")) == ids[0]
        unsub = await pool.fetchrow("SELECT * FROM unsubscribes WHERE user_id = $1", ids[1])
        assert unsub["email"] is None and unsub["email_idx"] == email_index(keyring, f"only{base}@example.test")
    finally:
        await pool.execute("DELETE FROM users WHERE user_id = ANY($1)", ids)
        await pool.close()

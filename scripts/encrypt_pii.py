"""Encrypt the addresses stored before migration 012 and empty their plaintext columns.

    python -m scripts.encrypt_pii [--from-id N] [--to-id M] [--batch 1000]

Rows of ``users`` (email, phone) and ``unsubscribes`` (email) that still hold plaintext get their
ciphertext and blind index (``pipeline/pii.py``, keys from settings) and NULL plaintext, in keyset
batches of one transaction each; running it again finds nothing left to do. Run it once every API
and worker process runs code that reads the encrypted columns (code from before issue 16 reads only
the plaintext ones); after it, a migration can drop the plaintext columns.
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from config import Settings, get_settings
from pipeline.pii import Keyring, sealed
from pipeline.pii_keys import pii_keyring

BIGINT_MAX = 2**63 - 1


async def encrypt_users(pool: asyncpg.Pool, keyring: Keyring, first: int = 0, last: int = BIGINT_MAX,
                        batch: int = 1000) -> int:
    """Encrypt the plaintext users with ids in [first, last]; how many rows changed."""
    done, after = 0, first - 1
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT user_id, email, phone FROM users WHERE user_id > $1 AND user_id <= $2"
                " AND (email IS NOT NULL OR phone IS NOT NULL) ORDER BY user_id LIMIT $3 FOR UPDATE",
                after, last, batch)
            if not rows:
                return done
            await conn.executemany(
                "UPDATE users SET email = NULL, phone = NULL,"
                " email_enc = COALESCE($2, email_enc), email_idx = COALESCE($3, email_idx),"
                " phone_enc = COALESCE($4, phone_enc), phone_idx = COALESCE($5, phone_idx) WHERE user_id = $1",
                [(r["user_id"], *sealed(keyring, "email", r["email"]), *sealed(keyring, "phone", r["phone"]))
                 for r in rows])
            done += len(rows)
            after = rows[-1]["user_id"]


async def encrypt_unsubscribes(pool: asyncpg.Pool, keyring: Keyring, first: int = 0, last: int = BIGINT_MAX,
                               batch: int = 1000) -> int:
    """The same for ``unsubscribes.email`` of users with ids in [first, last]."""
    done = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT unsubscribe_id, email FROM unsubscribes WHERE email IS NOT NULL AND user_id BETWEEN $1 AND $2"
                " LIMIT $3 FOR UPDATE", first, last, batch)
            if not rows:
                return done
            await conn.executemany(
                "UPDATE unsubscribes SET email = NULL, email_enc = $2, email_idx = $3 WHERE unsubscribe_id = $1",
                [(r["unsubscribe_id"], *sealed(keyring, "email", r["email"])) for r in rows])
            done += len(rows)


async def main(settings: Settings, first: int, last: int, batch: int) -> None:
    keyring = pii_keyring(settings)
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=2)
    try:
        users = await encrypt_users(pool, keyring, first, last, batch)
        unsubscribes = await encrypt_unsubscribes(pool, keyring, first, last, batch)
    finally:
        await pool.close()
    print(f"encrypted: {users} users, {unsubscribes} unsubscribes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-id", type=int, default=0)
    parser.add_argument("--to-id", type=int, default=BIGINT_MAX)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(get_settings(), args.from_id, args.to_id, args.batch))

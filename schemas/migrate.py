"""Apply Herald's schemas, idempotently: Postgres migrations, Cassandra CQL, Kafka topics.

    python -m schemas.migrate            # all three
    python -m schemas.migrate postgres   # just one

Postgres migrations run once each, in file order, inside a transaction and under
an advisory lock, and are remembered in ``schema_migrations``. The CQL and the
topics are declared with "if not exists" semantics and may run any number of times.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from config import Settings, get_settings

SCHEMA_DIR = Path(__file__).resolve().parent
_MIGRATION_LOCK = 0x6865_7261_6C64  # "herald"


async def migrate_postgres(settings: Settings) -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    conn = await asyncpg.connect(settings.postgres_dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for path in sorted((SCHEMA_DIR / "postgres").glob("*.sql")):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied_now


def cql_statements(keyspace: str) -> list[str]:
    text = (SCHEMA_DIR / "cassandra.cql").read_text()
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    statements = [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
    return [s.format(keyspace=keyspace) for s in statements]


def migrate_cassandra(settings: Settings) -> int:
    """Create the keyspace and tables; return how many statements ran."""
    from pipeline.stores.cassandra import connect

    cluster, session = connect(settings)
    try:
        statements = cql_statements(settings.cassandra_keyspace)
        for statement in statements:
            session.execute(statement, timeout=60)
        return len(statements)
    finally:
        cluster.shutdown()


async def migrate_kafka(settings: Settings, deadline_s: float = 60.0) -> list[str]:
    """Create every topic in pipeline.app.TOPICS that does not exist yet."""
    from pipeline.app import TOPICS

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    created: list[str] = []
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            existing = set(await admin.list_topics())
            missing = [t for t in TOPICS if t.name not in existing]
            if not missing:
                return created
            try:
                await admin.create_topics(
                    [NewTopic(t.name, t.partitions, 1, topic_configs=t.config) for t in missing]
                )
                created += [t.name for t in missing]
            except TopicAlreadyExistsError:
                pass  # another process won the race; the next pass sees it
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)  # controller not ready yet right after start
    finally:
        await admin.close()


async def migrate_all(settings: Settings, only: set[str] | None = None) -> dict[str, object]:
    report: dict[str, object] = {}
    if not only or "postgres" in only:
        report["postgres"] = await migrate_postgres(settings)
    if not only or "cassandra" in only:
        report["cassandra"] = await asyncio.to_thread(migrate_cassandra, settings)
    if not only or "kafka" in only:
        report["kafka"] = await migrate_kafka(settings)
    return report


def main(argv: list[str]) -> None:
    report = asyncio.run(migrate_all(get_settings(), set(argv) or None))
    for store, outcome in report.items():
        print(f"schema {store}: {outcome}")


if __name__ == "__main__":
    main(sys.argv[1:])

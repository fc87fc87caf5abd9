"""Apply Herald's schemas, idempotently: Postgres migrations, Cassandra CQL, Kafka topics.

    python -m scripts.migrate            # all three
    python -m scripts.migrate postgres   # just one

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
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from config import Settings, get_settings
from pipeline.retention_io import apply_table_ttls
from pipeline.stores.cassandra import connect
from schemas.topics import TOPICS

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
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
    """Create the keyspace and tables and set the retained tables' TTL; return how many statements ran."""
    cluster, session = connect(settings)
    try:
        statements = cql_statements(settings.cassandra_keyspace)
        # campaign_metrics.value was a counter before it held absolute hourly counts: that table goes.
        old = session.execute("SELECT type FROM system_schema.columns WHERE keyspace_name = %s"
                              " AND table_name = 'campaign_metrics' AND column_name = 'value'",
                              (settings.cassandra_keyspace,)).one()
        if old is not None and old.type == "counter":
            session.execute(f"DROP TABLE {settings.cassandra_keyspace}.campaign_metrics", timeout=60)
        for statement in statements:
            session.execute(statement, timeout=60)
        # message_log and user_events expire after HERALD_RETENTION_DAYS (pipeline/retention.py).
        return len(statements) + len(apply_table_ttls(settings, session))
    finally:
        cluster.shutdown()


async def migrate_kafka(settings: Settings, deadline_s: float = 60.0) -> list[str]:
    """Create every topic in schemas.topics.TOPICS that does not exist yet, and bring the configuration
    of those that do to what their spec says (e.g. a cleanup policy changed since they were made).
    Returns what it did: topic names, created, and ``"<name>: <key>=<value> ..."`` for each altered."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    done: list[str] = []
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            existing = set(await admin.list_topics())
            missing = [t for t in TOPICS if t.name not in existing]
            if not missing:
                break
            try:
                await admin.create_topics(
                    [NewTopic(t.name, t.partitions, 1, topic_configs=t.config) for t in missing]
                )
                done += [t.name for t in missing]
            except TopicAlreadyExistsError:
                pass  # another process won the race; the next pass sees it
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)  # controller not ready yet right after start
        done += await _align_topic_configs(admin, TOPICS)
        return done
    finally:
        await admin.close()


async def _align_topic_configs(admin: AIOKafkaAdminClient, specs) -> list[str]:
    """Alter the topics whose configuration differs from their spec's; one line per altered topic.

    AlterConfigs sets a topic's whole set of overrides, so the spec's set replaces what was there
    (Herald owns these topics; nothing else sets their configuration)."""
    answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, s.name, dict(s.config))
                                            for s in specs])
    current: dict[str, dict[str, str]] = {}
    for answer in answers:
        for _code, _message, _type, name, entries in answer.resources:
            current[name] = {entry[0]: entry[1] for entry in entries}
    drifted = [s for s in specs if any(current.get(s.name, {}).get(k) != v for k, v in s.config.items())]
    if not drifted:
        return []
    answers = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, s.name, dict(s.config))
                                         for s in drifted])
    for answer in answers:
        for code, message, _type, name in answer.resources:
            if code:
                raise RuntimeError(f"altering topic {name}'s configuration failed: error {code} {message}")
    return [f"{s.name}: " + " ".join(f"{k}={v}" for k, v in s.config.items()) for s in drifted]


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

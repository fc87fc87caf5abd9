"""Each server of the local stack answers a real client and reports its version."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.probes import probe_kafka
from pipeline.stores.cassandra import connect, run_async


async def test_postgres_reports_its_version(settings):
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    assert int(version.split(".")[0]) >= 13
    assert {"users", "user_preferences", "unsubscribes", "campaigns", "segments", "segment_members",
            "templates", "webhooks", "api_keys", "audit_log", "exports"} <= tables


async def test_redis_reports_its_version(settings):
    client = aioredis.from_url(settings.redis_url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    assert int(str(info["redis_version"]).split(".")[0]) >= 6


async def test_cassandra_reports_its_version_and_has_the_tables(settings):
    cluster, session = await asyncio.to_thread(connect, settings)
    try:
        row = (await run_async(session, "SELECT release_version FROM system.local"))[0]
        tables = {r.table_name for r in await run_async(
            session, "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
            (settings.cassandra_keyspace,))}
    finally:
        cluster.shutdown()
    assert row.release_version.startswith("5.0")
    assert {"message_log", "user_events", "campaign_metrics"} <= tables


async def test_kafka_reports_its_version_and_has_the_topics(settings):
    description = await asyncio.to_thread(probe_kafka, settings.kafka_host, settings.kafka_port)
    assert description.startswith("kafka metadata.version=")
    assert int(description.split("=")[1]) >= 1
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        topics = await admin.describe_topics(["user-profiles", "user-events", "dead-letters"])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "user-profiles")])
    finally:
        await admin.close()
    assert cluster["cluster_id"]
    assert {t["topic"]: len(t["partitions"]) for t in topics} == {
        "user-profiles": settings.topic_partitions,
        "user-events": settings.topic_partitions,
        "dead-letters": settings.topic_partitions,
    }
    entries = {name: value for name, value, *_ in configs[0].resources[0][4]}
    assert entries["cleanup.policy"] == "compact"


async def test_a_topic_whose_configuration_drifted_is_brought_back_to_its_spec(settings):
    """scripts/migrate.py: a topic made before its spec changed (e.g. a changelog made compact-only,
    before its deletion after the longest window) gets the spec's configuration on the next migrate."""
    from aiokafka.admin import NewTopic

    from schemas.topics import TopicSpec
    from scripts.migrate import _align_topic_configs

    spec = TopicSpec(f"herald-test-drift-{uuid.uuid4().hex[:8]}", 1, compacted=True, retention_ms=3_600_000)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(spec.name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        altered = await _align_topic_configs(admin, [spec])
        again = await _align_topic_configs(admin, [spec])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name)])
        await admin.delete_topics([spec.name])
    finally:
        await admin.close()
    entries = {name: value for name, value, *_ in configs[0].resources[0][4]}
    assert altered == [f"{spec.name}: cleanup.policy=compact,delete retention.ms=3600000 segment.ms=3600000"]
    assert again == []
    assert (entries["cleanup.policy"], entries["retention.ms"], entries["segment.ms"]) == (
        "compact,delete", "3600000", "3600000")

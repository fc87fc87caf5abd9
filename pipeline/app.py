"""Herald's Faust app: the app with its settings, then its topics (declared in ``schemas.topics``).

Read top to bottom like a table of contents. Agents live in ``agents/`` (one per
file) and attach themselves to this app; tables live in ``tables/``.

Values travel as raw bytes and are decoded by ``pipeline.codecs`` inside each
agent, so that a record that fails validation becomes a dead letter with its
reason instead of crashing the stream.
"""

from __future__ import annotations

import faust

from config import get_settings
from pipeline.launch_audience import WorkerAudience
from pipeline.worker_clients import WorkerClients
from schemas.topics import (
    CAMPAIGN_CONTROL, CAMPAIGN_LAUNCHES, DEAD_LETTERS, DELIVERY_EVENTS, JOURNEY_SIGNALS, MESSAGE_REQUESTS, OUTBOX,
    PREFERENCE_UPDATES, USER_ERASURES, USER_EVENTS, USER_PROFILES, TopicSpec,
)

settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{b.strip()}" for b in settings.kafka_brokers.split(",")],
    store="memory://",
    datadir=str(settings.local_dir / "faust"),
    autodiscover=["agents", "tables"],
    origin="pipeline",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=1,
    topic_allow_declare=False,  # scripts/migrate.py declares them, from schemas/topics.py
    topic_disable_leader=True,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    stream_wait_empty=False,
    # No standby replicas: a standby decodes every changelog record of the tables it
    # shadows (measured: ~10 % of a worker's CPU in the gate's JSON values). The gate's
    # tables are grouped per bucket, so a worker restores a partition in seconds anyway.
    table_standby_replicas=0,
    # A SIGKILLed worker's partitions wait for its session to expire: Faust's default
    # (60 s) held a restarted worker's streams for 60-72 s in bench/chaos.py.
    broker_session_timeout=20.0,
    broker_commit_every=5000,
    broker_commit_interval=1.0,
    producer_linger_ms=5,
    producer_max_batch_size=1_048_576,
    producer_max_request_size=4_194_304,
    key_serializer="raw",
    value_serializer="raw",
)


# The worker's clients (one PostgreSQL pool, Redis client, Cassandra session and Kafka producer),
# opened on first use and handed to every stage; closed when the worker stops.
clients = WorkerClients(settings)
# The worker's live audience store (segments), opened by agents/explode.py's ``follow_audience`` task
# and read by the stages that resolve segments (explode; advance_journeys' segment tests and entries).
audience = WorkerAudience(settings)


@app.on_before_shutdown.connect
async def _close_clients(sender: faust.App, **kwargs) -> None:
    await clients.close()


def _topic(spec: TopicSpec) -> faust.TopicT:
    return app.topic(spec.name, partitions=spec.partitions)


user_profiles_topic = _topic(USER_PROFILES)
user_events_topic = _topic(USER_EVENTS)
dead_letters_topic = _topic(DEAD_LETTERS)
campaign_launches_topic = _topic(CAMPAIGN_LAUNCHES)
campaign_control_topic = _topic(CAMPAIGN_CONTROL)
preference_updates_topic = _topic(PREFERENCE_UPDATES)
user_erasures_topic = _topic(USER_ERASURES)
message_requests_topic = _topic(MESSAGE_REQUESTS)
outbox_topics = {channel: _topic(spec) for channel, spec in OUTBOX.items()}
delivery_events_topic = _topic(DELIVERY_EVENTS)
# advance_journeys reads both, co-partitioned by user: signals, and the engagement of its messages.
journey_inputs_topic = app.topic(JOURNEY_SIGNALS.name, DELIVERY_EVENTS.name, partitions=JOURNEY_SIGNALS.partitions)

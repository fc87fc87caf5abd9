"""Herald's Faust app: the app with its settings, then every topic it owns.

Read top to bottom like a table of contents. Agents live in ``agents/`` (one per
file) and attach themselves to this app; tables live in ``tables/``.

Values travel as raw bytes and are decoded by ``pipeline.codecs`` inside each
agent, so that a record that fails validation becomes a dead letter with its
reason instead of crashing the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from config import get_settings
from schemas.preferences import FREQUENCY_CAP_WINDOW_DAYS

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
    topic_allow_declare=False,  # scripts/stack.py declares topics explicitly, see TOPICS
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


# Kafka compacts only segments that have rolled, and by default a segment rolls after 7 days or
# 1 GiB: a table's changelog would be read back whole, every write of the week, by a restarted
# worker. Hourly segments let the cleaner keep a compacted topic near one record per key.
COMPACT_SEGMENT_MS = 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic Herald owns: its name, partitions and Kafka configuration."""

    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = None  # with compacted: compacted, and what no write refreshed for this long deleted

    @property
    def table_name(self) -> str:
        """For a table's changelog topic ``<app_id>-<table>-changelog``: the table's name."""
        return self.name.removeprefix(f"{settings.app_id}-").removesuffix("-changelog")

    @property
    def config(self) -> dict[str, str]:
        policy = ("compact,delete" if self.retention_ms is not None else "compact") if self.compacted else "delete"
        config = {"cleanup.policy": policy}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        if self.compacted:
            config["segment.ms"] = str(COMPACT_SEGMENT_MS)
        return config


_P = settings.topic_partitions
_WEEK_MS = 7 * 24 * 3600 * 1000

# Latest state per key (compacted) or a log of facts (deleted after retention).
USER_PROFILES = TopicSpec("user-profiles", _P, compacted=True)
USER_EVENTS = TopicSpec("user-events", _P, retention_ms=_WEEK_MS)
PREFERENCE_UPDATES = TopicSpec("preference-updates", _P, compacted=True)
CAMPAIGN_LAUNCHES = TopicSpec("campaign-launches", _P)
CAMPAIGN_CONTROL = TopicSpec("campaign-control", _P)
DEAD_LETTERS = TopicSpec("dead-letters", _P, retention_ms=4 * _WEEK_MS)

# The delivery pipeline (schemas/messages.py): batches of recipients, one partition each.
MESSAGE_REQUESTS = TopicSpec("message-requests", _P, retention_ms=_WEEK_MS)
OUTBOX = {channel: TopicSpec(f"outbox.{channel}", _P, retention_ms=_WEEK_MS)
          for channel in ("email", "sms", "push", "in_app", "webhook")}
DELIVERY_EVENTS = TopicSpec("delivery-events", _P, retention_ms=4 * _WEEK_MS)

# Changelogs of Faust tables, named as Faust names them, declared here like the rest.
DEAD_LETTER_COUNTS = TopicSpec(f"{settings.app_id}-dead_letter_counts-changelog", _P, compacted=True)
# The gate's grouped state (tables/gate_state.py).
GATE_PREFERENCES = TopicSpec(f"{settings.app_id}-gate_preferences-changelog", _P, compacted=True)
GATE_SUPPRESSIONS = TopicSpec(f"{settings.app_id}-gate_suppressions-changelog", _P, compacted=True)
# Dedup marks and cap times expire: a history key that no write has refreshed for longer than the
# longest window (the configured cap window, or a user's own, schemas/preferences.py; the dedup
# window) holds nothing that still counts, and is deleted, besides compaction (pipeline/gate.py).
_HISTORY_KEEP_MS = (max(max(settings.gate_cap_window_days, FREQUENCY_CAP_WINDOW_DAYS) * 86400,
                        settings.gate_dedup_window_s) + 86400) * 1000
GATE_HISTORY = TopicSpec(f"{settings.app_id}-gate_history-changelog", _P, compacted=True,
                         retention_ms=_HISTORY_KEEP_MS)

TOPICS: tuple[TopicSpec, ...] = (
    USER_PROFILES,
    USER_EVENTS,
    PREFERENCE_UPDATES,
    CAMPAIGN_LAUNCHES,
    CAMPAIGN_CONTROL,
    DEAD_LETTERS,
    DEAD_LETTER_COUNTS,
    MESSAGE_REQUESTS,
    *OUTBOX.values(),
    DELIVERY_EVENTS,
    GATE_PREFERENCES,
    GATE_SUPPRESSIONS,
    GATE_HISTORY,
)

user_profiles_topic = app.topic(USER_PROFILES.name, partitions=USER_PROFILES.partitions)
user_events_topic = app.topic(USER_EVENTS.name, partitions=USER_EVENTS.partitions)
dead_letters_topic = app.topic(DEAD_LETTERS.name, partitions=DEAD_LETTERS.partitions)
campaign_launches_topic = app.topic(CAMPAIGN_LAUNCHES.name, partitions=CAMPAIGN_LAUNCHES.partitions)
campaign_control_topic = app.topic(CAMPAIGN_CONTROL.name, partitions=CAMPAIGN_CONTROL.partitions)
preference_updates_topic = app.topic(PREFERENCE_UPDATES.name, partitions=PREFERENCE_UPDATES.partitions)
message_requests_topic = app.topic(MESSAGE_REQUESTS.name, partitions=MESSAGE_REQUESTS.partitions)
outbox_topics = {channel: app.topic(spec.name, partitions=spec.partitions) for channel, spec in OUTBOX.items()}
delivery_events_topic = app.topic(DELIVERY_EVENTS.name, partitions=DELIVERY_EVENTS.partitions)

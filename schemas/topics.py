"""Every Kafka topic Herald owns, declared once: name, the record it carries, partitions, config.

Faust-free on purpose: the Faust app (``pipeline.app``), the migrations (``scripts/migrate.py``),
the API, the stages' own consumers, the benches and the tests all read these specs; only the
app turns them into Faust topics.

    upstream ─► user-profiles (compacted) · user-events
    API ─────► campaign-launches · campaign-control · preference-updates (compacted)
    explode ─► message-requests ─► gate ─► outbox.<channel> ─► senders ─► delivery-events
    rule topics ─► match_triggers ─► journey-signals ─► advance_journeys ─► message-requests
    anything that cannot be processed ─► dead-letters
    Faust tables ─► <app_id>-<table>-changelog (compacted)
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from config import get_settings
from schemas.campaigns import CampaignControl, CampaignLaunch
from schemas.erasure import UserErasure
from schemas.journeys import JourneySignal
from schemas.messages import CHANNELS, DeliveryEventBatch, MessageBatch
from schemas.preferences import FREQUENCY_CAP_WINDOW_DAYS, PreferenceUpdate
from schemas.records import DeadLetter, UserEvent, UserProfile

settings = get_settings()

# Kafka compacts only segments that have rolled, and by default a segment rolls after 7 days or
# 1 GiB: a table's changelog would be read back whole, every write of the week, by a restarted
# worker. Hourly segments let the cleaner keep a compacted topic near one record per key.
COMPACT_SEGMENT_MS = 3600 * 1000
WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic Herald owns: its name, the record each of its values is, partitions and Kafka config.

    ``record`` is None for a Faust table's changelog (Faust writes its own values there).
    """

    name: str
    partitions: int
    record: type[BaseModel] | None = None
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


def changelog(table: str, *, retention_ms: int | None = None) -> TopicSpec:
    """The changelog of Faust table ``table``, named as Faust names it."""
    return TopicSpec(f"{settings.app_id}-{table}-changelog", _P, compacted=True, retention_ms=retention_ms)


_P = settings.topic_partitions

# Latest state per key (compacted) or a log of facts (deleted after retention).
USER_PROFILES = TopicSpec("user-profiles", _P, UserProfile, compacted=True)
# Retention (pipeline/retention.py): user-events feeds Cassandra user_events and delivery-events feeds
# message_log, whose rows expire HERALD_RETENTION_DAYS after their write. The topics "match" them: they keep
# a record for what their consumers need (a week; four for the aggregate's replays) but never longer than
# the tables keep its row, so no replay can write back a fact the store has let expire.
_RETAINED_MS = settings.retention_days * 24 * 3600 * 1000
USER_EVENTS = TopicSpec("user-events", _P, UserEvent, retention_ms=min(WEEK_MS, _RETAINED_MS))
PREFERENCE_UPDATES = TopicSpec("preference-updates", _P, PreferenceUpdate, compacted=True)
CAMPAIGN_LAUNCHES = TopicSpec("campaign-launches", _P, CampaignLaunch)
CAMPAIGN_CONTROL = TopicSpec("campaign-control", _P, CampaignControl)
DEAD_LETTERS = TopicSpec("dead-letters", _P, DeadLetter, retention_ms=4 * WEEK_MS)
# GDPR erasures for the workers owning each user's table state (pipeline/erase.py).
USER_ERASURES = TopicSpec("user-erasures", _P, UserErasure, retention_ms=WEEK_MS)

# The delivery pipeline (schemas/messages.py): batches of recipients, one partition each.
MESSAGE_REQUESTS = TopicSpec("message-requests", _P, MessageBatch, retention_ms=WEEK_MS)
OUTBOX = {channel: TopicSpec(f"outbox.{channel}", _P, MessageBatch, retention_ms=WEEK_MS) for channel in CHANNELS}
DELIVERY_EVENTS = TopicSpec("delivery-events", _P, DeliveryEventBatch,
                            retention_ms=min(4 * WEEK_MS, _RETAINED_MS))
# The trigger stages (schemas/journeys.py): events some flow listens to, and due timers, per partition.
JOURNEY_SIGNALS = TopicSpec("journey-signals", _P, JourneySignal, retention_ms=WEEK_MS)

# Changelogs of Faust tables (tables/), declared here like the rest.
DEAD_LETTER_COUNTS = changelog("dead_letter_counts")
# The gate's grouped state (tables/gate_state.py).
GATE_PREFERENCES = changelog("gate_preferences")
GATE_SUPPRESSIONS = changelog("gate_suppressions")
# Dedup marks and cap times expire: a history key that no write has refreshed for longer than the
# longest window (the configured cap window, or a user's own, schemas/preferences.py; the dedup
# window) holds nothing that still counts, and is deleted, besides compaction (pipeline/gate.py).
_HISTORY_KEEP_MS = (max(max(settings.gate_cap_window_days, FREQUENCY_CAP_WINDOW_DAYS) * 86400,
                        settings.gate_dedup_window_s) + 86400) * 1000
GATE_HISTORY = changelog("gate_history", retention_ms=_HISTORY_KEEP_MS)
# Each user's place in every flow (tables/journey_state.py): compacted, kept while the user is.
JOURNEY_STATE = changelog("journey_state")

TOPICS: tuple[TopicSpec, ...] = (
    USER_PROFILES,
    USER_EVENTS,
    PREFERENCE_UPDATES,
    CAMPAIGN_LAUNCHES,
    CAMPAIGN_CONTROL,
    DEAD_LETTERS,
    USER_ERASURES,
    DEAD_LETTER_COUNTS,
    MESSAGE_REQUESTS,
    *OUTBOX.values(),
    DELIVERY_EVENTS,
    JOURNEY_SIGNALS,
    GATE_PREFERENCES,
    GATE_SUPPRESSIONS,
    GATE_HISTORY,
    JOURNEY_STATE,
)


def outbox_or_requests(channel: str | None) -> TopicSpec:
    """Where a batch for ``channel`` goes back to: its outbox, or the gate's input when no channel."""
    return OUTBOX[channel] if channel in OUTBOX else MESSAGE_REQUESTS

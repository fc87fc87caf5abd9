"""Every Redis key Herald uses, built in one place.

A campaign's run (explode, gate, senders, control and the aggregate share it):

    campaign:{id}:status              active | paused | cancelled | completed
    campaign:{id}:launch              the launch_id the status belongs to
    campaign:{id}:held                list of encoded MessageBatch held while paused
    campaign:{id}:held_sources        set of where each held batch came from (a replay holds it once)
    campaign:{id}:expected            recipients × channels, once the whole audience is emitted
    campaign:{id}:audience            recipients of the launch
    campaign:{id}:run_base            the counters as they were when the current launch began (a run's base)
    campaign:{id}:spend               budget spent so far (the gate's reservations)
    campaign:{id}:reservations        hash: reservation id → what it reserved (a replay reserves once)
    campaign:{id}:metrics[:ch[:var]]  live counters, whole / per channel / per channel and variant
    campaign:{id}:seen:{shard}        message ids the aggregate has counted (a replay counts once)
    aggregate:open                    campaigns whose completion is still to be decided

Delivery, per channel:

    bucket:{channel}                  the channel's token bucket (every worker draws from it)
    lag:{channel}, lag:{channel}:by   seconds a batch released now would wait; the sender reporting it
    flow:{channel}:out                release window: batches released and not yet finished
    flow:{channel}:senders            release window: live sender slots
    sends:{campaign}:{ch}:{step}:{p}  idempotency ledger: user → provider id
    claim:{ledger key}:{batch id}     a sender's claim on one outbox batch
    gate:deferred                     batches deferred by quiet hours, by release time

The API's rate limits (api/ratelimit.py):

    ratelimit:key:{key id}            an API key's token bucket
    ratelimit:{group}:{address}       a client address's bucket on a public group (unsubscribe, tracking, callbacks)

People:

    inbox:{user}                      a user's in-app inbox

Flows (journeys "j{id}", triggered campaigns "c{id}"; pipeline/journeys):

    flow:{flow}:progress              entered, at:{node}, exited:{reason}, timed_out, converted
    flow:{flow}:entries               entries counted against the entry limit
    flow:{flow}:exit:{user}           the entry a goal or stop ended: its queued messages are dropped
    flow:{flow}:segment:{partition}   a segment-entry flow's members last seen, per partition (packed int64)
    flows:changed                     bumped when what the trigger stages load changes
    test:clock:offset_s               how far the flows' clock runs ahead, on test workers only
"""

from __future__ import annotations

# ── a campaign's run ──────────────────────────────────────────────────────────


def status_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:status"


def launch_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:launch"


def held_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:held"


def held_sources_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:held_sources"


def expected_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:expected"


def audience_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:audience"


def run_base_key(campaign_id: int) -> str:
    """The campaign's counters copied when its current launch began: a recurring run's counts are the
    totals minus this, and it completes when ``accounted`` is this base plus its own messages."""
    return f"campaign:{campaign_id}:run_base"


def spend_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:spend"


def reservations_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:reservations"


NO_VARIANT = "-"  # the variant part of a counter key for a campaign without A/B variants


def metrics_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:metrics"


def channel_metrics_key(campaign_id: int, channel: str) -> str:
    return f"campaign:{campaign_id}:metrics:{channel}"


def variant_metrics_key(campaign_id: int, channel: str, variant: str | None) -> str:
    return f"campaign:{campaign_id}:metrics:{channel}:{variant or NO_VARIANT}"


def minute_metrics_key(campaign_id: int, minute: int) -> str:
    """Hash: the campaign's counts of one minute (``minute``: minutes since the epoch, UTC), field
    ``<channel>:<variant>:<metric>`` (pipeline/metrics.py: the time series of the analytics API)."""
    return f"campaign:{campaign_id}:m:{minute}"


def hour_metrics_key(campaign_id: int, hour: int) -> str:
    """Hash: the campaign's counts of one hour (hours since the epoch, UTC), fields as ``minute_metrics_key``."""
    return f"campaign:{campaign_id}:h:{hour}"


def dashboard_minute_key(minute: int) -> str:
    """Hash: every campaign's counts of one minute, field ``<channel>:<metric>`` (the realtime dashboard)."""
    return f"dashboard:m:{minute}"


def dashboard_day_key(day: int) -> str:
    """Hash: every campaign's counts of one UTC day (days since the epoch), field ``<channel>:<metric>``."""
    return f"dashboard:d:{day}"


def dashboard_top_key(day: int) -> str:
    """Sorted set: campaigns by messages sent on one UTC day (days since the epoch)."""
    return f"dashboard:top:{day}"


def seen_key(campaign_id: int, shard: str) -> str:
    return f"campaign:{campaign_id}:seen:{shard}"


def seen_pattern(campaign_id: int) -> str:
    """Every ``seen`` bucket of a campaign (for SCAN)."""
    return f"campaign:{campaign_id}:seen:*"


def campaign_pattern(campaign_id: int) -> str:
    """Every key of a campaign's run (for SCAN)."""
    return f"campaign:{campaign_id}:*"


OPEN_CAMPAIGNS = "aggregate:open"
# Set of "<campaign id>:<hour>" whose hour counts changed since they were last copied to Cassandra's
# campaign_metrics (pipeline/aggregate_io.py's HourlyMetrics).
DIRTY_HOURS = "aggregate:hours:dirty"

# ── delivery, per channel ─────────────────────────────────────────────────────


def bucket_key(channel: str) -> str:
    return f"bucket:{channel}"


def lag_key(channel: str) -> str:
    return f"lag:{channel}"


def lag_writer_key(channel: str) -> str:
    return f"lag:{channel}:by"


def window_out_key(channel: str) -> str:
    return f"flow:{channel}:out"


def window_senders_key(channel: str) -> str:
    return f"flow:{channel}:senders"


def window_weights_key(channel: str) -> str:
    """Hash: outbox batch id → its weight in the release window (a full batch weighs 1)."""
    return f"flow:{channel}:weights"


def ledger_key(campaign_id: int, channel: str, step: str, partition: int) -> str:
    return f"sends:{campaign_id}:{channel}:{step}:{partition}"


def claim_key(ledger: str, batch_id: str) -> str:
    return f"claim:{ledger}:{batch_id}"


DEFERRED = "gate:deferred"

# ── people ────────────────────────────────────────────────────────────────────


def inbox_key(user_id: int | str) -> str:
    return f"inbox:{user_id}"


# ── flows: journeys ("j{id}") and triggered campaigns ("c{id}") ───────────────


def flow_progress_key(flow: str) -> str:
    """Hash of a flow's live progress: entered, at:{node}, exited:{reason}, timed_out, converted, refused:{why}."""
    return f"flow:{flow}:progress"


def flow_entries_key(flow: str) -> str:
    """Entries counted against the flow's entry limit (INCR per entry)."""
    return f"flow:{flow}:entries"


def flow_exit_key(flow: str, user_id: int) -> str:
    """The entry number (k) of the user's last goal exit or stop: their messages of that entry still
    queued are not sent (the gate and the senders read it)."""
    return f"flow:{flow}:exit:{user_id}"


def flow_segment_key(flow: str, partition: int) -> str:
    """The members of a segment-entry flow's segment in ``partition`` at the last look (little-endian int64s):
    whoever is in the segment now and was not then has entered it."""
    return f"flow:{flow}:segment:{partition}"


FLOWS_CHANGED = "flows:changed"  # bumped when a journey is published or stopped, or a trigger changes
def touch_key(user_id: int) -> str:
    """Hash: the user's last message per campaign (campaign id → touch), and ``c<campaign>`` once converted
    (pipeline/attribution.py)."""
    return f"touch:{user_id}"


TEST_CLOCK = "test:clock:offset_s"  # seconds the flows' clock runs ahead (HERALD_TEST_CLOCK workers only)


def api_key_limit_key(key_id: int) -> str:
    return f"ratelimit:key:{key_id}"


def address_limit_key(group: str, address: str) -> str:
    return f"ratelimit:{group}:{address}"

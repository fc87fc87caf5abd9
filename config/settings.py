"""Settings from HERALD_* environment variables, with safe local defaults.

This is the only module that reads the environment. Everything else receives
a ``Settings`` instance (or a value taken from one).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    # Endpoints of the four servers.
    kafka_brokers: str = "127.0.0.1:9092"
    cassandra_hosts: str = "127.0.0.1"
    cassandra_port: int = 9042
    cassandra_keyspace: str = "herald"
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_dsn: str = "postgresql://herald:herald@127.0.0.1:5432/herald"

    # The local stack (scripts/stack.py): where it lives and how big it is.
    local_dir: Path = REPO_ROOT / ".local"
    kafka_version: str = "3.9.1"
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    cassandra_version: str = "5.0.6"
    cassandra_storage_port: int = 7000
    cassandra_jmx_port: int = 7199
    cassandra_heap: str = "1g"

    # Kafka topics and the Faust worker.
    topic_partitions: int = Field(default=8, ge=1)
    app_id: str = "herald"
    worker_batch_size: int = Field(default=2000, ge=1)
    worker_batch_seconds: float = Field(default=0.25, gt=0)
    # One PostgreSQL pool per worker process, shared by every stage (pipeline/worker_clients.py).
    worker_postgres_pool: int = Field(default=10, ge=1)

    # The trigger stages (agents/match_triggers.py, agents/advance_journeys.py).
    # How long a journey's sends wait to be sent on together (one message-requests record per
    # campaign, step and partition), and how often the timers and the flows' definitions are checked.
    # One second: each record then carries a second's entries of its campaign and partition. At 0.25 s
    # the gate and the senders got four times the records, of ~1.7 users each, and at 1,000 events/s
    # (200 entries/s) their per-record cost put them behind: p99 event → provider 16-19 s, against
    # 1.9 s at 1 s (bench/triggers.py --rate 1000 --event-topic own, BENCHMARKS.md).
    journey_flush_s: float = Field(default=1.0, gt=0)
    journey_tick_s: float = Field(default=0.25, gt=0)
    journey_reload_s: float = Field(default=30.0, gt=0)
    # How often a journey that users enter by entering a dynamic segment looks at the segment's members.
    journey_segment_s: float = Field(default=10.0, gt=0)
    # Test workers only: the flows' clock runs ahead by Redis ``test:clock:offset_s`` (tests wait days in seconds).
    test_clock: bool = False

    # `make run`: how many worker processes, and the demo audience it loads.
    workers: int = Field(default=2, ge=1)
    demo_users: int = Field(default=100_000, ge=0)

    # The API.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    health_timeout_s: float = 1.5
    api_key_cache_s: float = 5.0
    # Request bodies over this many bytes get 413 before they are read (api/body_limit.py); the provider
    # callbacks (/callbacks/...) take up to api_max_callback_bytes, as SendGrid posts batches of events.
    api_max_body_bytes: int = Field(default=2**20, ge=1024)
    api_max_callback_bytes: int = Field(default=4 * 2**20, ge=1024)
    # Free-form JSON (campaign goals, triggers, content variables, webhook payloads) nested deeper gets 422.
    api_max_json_depth: int = Field(default=32, ge=4, le=256)
    # Where people reach Herald from outside: unsubscribe, tracking and preview links.
    public_url: str = "http://127.0.0.1:8080"

    # Rate limits (api/ratelimit.py): a token bucket per API key and per client address on the public
    # endpoints, in Redis so that every API process draws from the same one. Requests per second
    # ("name=rate,..."), and the burst as seconds' worth of that rate. Keys by role, a key by its id
    # ("api_rate_limit_keys": "17=50"); the public groups per client address. The defaults stay above
    # what bench/api.py and bench/analytics.py ask of one key (500 requests/s); Twilio posts a status
    # callback per SMS from a handful of addresses, and a webmail's image proxy fetches many people's
    # pixels from one, so those groups are generous. Off: no limit at all (and no Redis call).
    rate_limits: bool = True
    api_rate_limits: str = Field(default="admin=1000,marketer=1000,analyst=1000",
                                 pattern=r"^(\s*[a-z_]+=\d+(\.\d+)?\s*(,\s*[a-z_]+=\d+(\.\d+)?\s*)*)?$")
    api_rate_limit_keys: str = Field(default="", pattern=r"^(\s*\d+=\d+(\.\d+)?\s*(,\s*\d+=\d+(\.\d+)?\s*)*)?$")
    public_rate_limits: str = Field(default="unsubscribe=10,tracking=200,callbacks=500",
                                    pattern=r"^(\s*[a-z_]+=\d+(\.\d+)?\s*(,\s*[a-z_]+=\d+(\.\d+)?\s*)*)?$")
    rate_limit_burst_s: float = Field(default=2.0, gt=0)

    # Signing secret for unsubscribe tokens and tracked links; kept in .local/ when unset.
    signing_secret: str | None = None
    # Email and phone encryption at rest (pipeline/pii.py): "id=<64 hex>,..." (the first key encrypts,
    # all decrypt), and the blind-index key (hex, >= 16 bytes). Kept in .local/ when unset.
    pii_keys: str | None = None
    pii_index_key: str | None = None

    # Audience store (pipeline/segments): snapshots and how fast it follows the topics.
    audience_snapshot_s: float = Field(default=60.0, gt=0)
    audience_poll_ms: int = Field(default=200, ge=10)

    # What one message costs, per channel, for estimates and budgets (in budget_currency units).
    unit_cost_email: float = 0.0010
    unit_cost_sms: float = 0.0075
    unit_cost_push: float = 0.0001
    unit_cost_in_app: float = 0.0
    unit_cost_webhook: float = 0.0
    currencies: str = "USD,EUR,GBP,JPY,CAD,AUD,CHF,SEK,NOK,DKK,INR,BRL,MXN,SGD,NZD"

    # Channel providers. Tests and the demo point these at local protocol peers.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_from: str = "Herald <campaigns@herald.local>"
    # CAN-SPAM: the sender's postal address, printed in every marketing email's text and HTML
    # (pipeline/email_footer.py); set it to your organisation's real address. And an address that
    # takes unsubscribe requests by mail, offered in List-Unsubscribe beside the one-click URL (unset: none).
    sender_postal_address: str = "Herald Campaigns, 100 Example Street, Springfield, IL 62701, USA"
    list_unsubscribe_mailto: str | None = None
    sms_url: str = "http://127.0.0.1:8091/2010-04-01/Accounts/ACherald/Messages.json"
    sms_account_sid: str = "ACherald"
    sms_auth_token: str = "herald-local"
    sms_from: str = "+15550100000"
    push_url: str = "http://127.0.0.1:8092/v1/projects/herald/messages:send"
    push_token: str = "herald-local"
    email_batch_url: str = "http://127.0.0.1:8093/v3/mail/send"
    email_batch_key: str = "herald-local"
    # Provider callbacks (api/callbacks.py). SendGrid's Event Webhook verification key (base64 DER, as its
    # settings page shows it); the default is the local peer's (tests/peers/keys.py), never a real account's.
    sendgrid_events_key: str = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAErj9TTW2gklN74cC3dlVz3cFF9Ufnbqrj15wLTHqnYzKwtwdqrls8"
                                "TmOcyZeQdUkcvF5DdjVMALYM5KlDNryNJg==")
    callback_tolerance_s: float = Field(default=300.0, gt=0)  # how old a signed callback may be
    sms_status_callbacks: bool = True
    # Inbound SMS keywords (api/sms_inbound.py): the replies Herald sends in TwiML.
    sms_help_text: str = "Herald alerts: reply STOP to unsubscribe, START to resubscribe. Msg & data rates may apply."
    sms_stop_text: str = "You are unsubscribed and will receive no more messages. Reply START to resubscribe."
    sms_start_text: str = "You are resubscribed. Reply HELP for help, STOP to unsubscribe."
    metrics_persist_s: float = Field(default=30.0, gt=0)  # how often changed hours go to Cassandra campaign_metrics  # ask Twilio for status callbacks (delivered, undelivered, failed)
    provider_timeout_s: float = 10.0
    email_provider: str = Field(default="smtp", pattern="^(smtp|batch)$")  # batch: the SendGrid-shaped HTTP API

    # Sending (pipeline/send/): per-channel rates shared by every worker (a token
    # bucket in Redis, messages per second, a second's worth of burst), retries, pools.
    rate_email: float = Field(default=5000.0, gt=0)
    rate_sms: float = Field(default=100.0, gt=0)
    rate_push: float = Field(default=5000.0, gt=0)
    rate_in_app: float = Field(default=50000.0, gt=0)
    rate_webhook: float = Field(default=1000.0, gt=0)
    send_max_attempts: int = Field(default=6, ge=1)
    send_backoff_base_s: float = Field(default=0.5, gt=0)
    send_backoff_cap_s: float = Field(default=10.0, gt=0)
    send_max_retry_after_s: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=8, ge=1)
    # Kept-alive connections per HTTP provider and worker. A busy worker's event loop turns slowly
    # (rendering, folding, logging share it), and each connection carries one request per turn
    # or two: with 8, push and SMS batches took 4-12 s when every channel ran at once.
    provider_connections: int = Field(default=64, ge=1)
    # Outbox batches a sender works on at once. A batch's messages wait on the provider's
    # connections and on the worker's CPU behind every other batch in flight, of every
    # channel, so more of them only add latency (bench/pipeline.py 200k: p99 13.7 s with 16,
    # 8.6 s with 4; 400k with every channel at once: 7.4 s with 4, 5.1 s with 2, 4.1 s with 1,
    # the same ~4,200 msgs/s). Two, so that a batch riding out a provider's backoff does not
    # stop its channel; the concurrency within a batch is ``send_chunk``.
    sender_batches_in_flight: int = Field(default=2, ge=1)
    # Messages handed to a provider between two looks at the campaign's status. Every batch
    # in flight queues this many at the provider's connections, so batches_in_flight × chunk
    # messages are already on their way when a pause lands: small enough to stop within 1 s.
    send_chunk: int = Field(default=64, ge=1)

    # The gate (pipeline/gate.py). Quiet hours "HH:MM-HH:MM" local time, applied to campaigns
    # that ask for them (or to all, by default); caps for users who set none, "email=3,sms=1"
    # per cap window; the dedup window of (campaign, user, channel, step).
    gate_quiet_hours: str = Field(default="21:00-08:00", pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")
    gate_quiet_hours_by_default: bool = False
    gate_frequency_caps: str = Field(default="", pattern=r"^(\s*[a-z_]+=\d+\s*(,\s*[a-z_]+=\d+\s*)*)?$")
    gate_cap_window_days: int = Field(default=7, ge=1)
    gate_dedup_window_s: int = Field(default=24 * 3600, ge=1)
    # Channels that need recorded consent (opt-in) before anything goes out on them, "sms,push";
    # empty: none. SMS by default (TCPA and most carriers' rules): the gate suppresses "no_consent".
    gate_opt_in_channels: str = Field(default="sms", pattern=r"^(\s*[a-z_]+\s*(,\s*[a-z_]+\s*)*)?$")
    # Per-channel quiet hours that apply whatever the campaign left unsaid (a campaign's own
    # schedule.quiet_hours still wins): "sms=21:00-08:00" sends SMS only 08:00-21:00 in the
    # recipient's zone; empty: none.
    gate_channel_quiet_hours: str = Field(default="sms=21:00-08:00",
                                          pattern=r"^(\s*[a-z_]+=\d{2}:\d{2}-\d{2}:\d{2}\s*(,\s*[a-z_]+=\d{2}:\d{2}-\d{2}:\d{2}\s*)*)?$")
    # Pacing: the gate holds a channel's releases while its senders say that a batch released
    # now would wait longer than this for them (seconds; pipeline/send/pacing.py's QueueLag: the
    # backlog over their finishing rate, the waits at pickup, the oldest batch in flight
    # while every slot is busy); 0 turns it off.
    # The audience then waits in message-requests (durable, replayable) instead of in
    # the outbox, so a released message reaches its provider within seconds and a pause
    # has little already queued to hold.
    gate_pace_lag_s: float = Field(default=1.0, ge=0)
    # Batches a gate may have read and not finished, across its lanes (agents/gate.py): a
    # channel that is behind holds its own batches, not the other channels' batches read
    # after them, until this many are waiting (~25 kB each).
    gate_batches_pending: int = Field(default=256, ge=1)

    # Retention (pipeline/retention.py): Cassandra message_log and user_events rows expire this many days
    # after they are written (the tables' default_time_to_live, set by scripts/migrate.py; the spec's
    # 30 days hot), and the user-events and delivery-events topics keep no record longer (schemas/topics.py).
    # The audit log keeps rows this many days; agents/retention.py deletes older ones every purge period.
    retention_days: int = Field(default=30, ge=1, le=20 * 365)  # Cassandra's TTL cap is 20 years
    audit_retention_days: int = Field(default=400, ge=1)
    audit_purge_every_s: float = Field(default=3600.0, gt=0)

    # The scheduler (agents/schedule.py): how often it looks for due campaigns (a scheduled start
    # fires within one tick plus the launch's acknowledgement: 0.2 s keeps it well inside 1 s at
    # one indexed query per tick), how many it claims per transaction, and after how long a run
    # whose launch record was never acknowledged (a worker killed between commit and publish) is
    # published again.
    schedule_tick_s: float = Field(default=0.2, gt=0)
    schedule_claim_batch: int = Field(default=100, ge=1)
    schedule_claimers: int = Field(default=4, ge=1)  # claim transactions side by side when many are due
    schedule_republish_after_s: float = Field(default=3.0, gt=0)

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_brokers.split(",")[0].rsplit(":", 1)[1])

    @property
    def kafka_host(self) -> str:
        return self.kafka_brokers.split(",")[0].rsplit(":", 1)[0]

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379

    @property
    def redis_host(self) -> str:
        return urlsplit(self.redis_url).hostname or "127.0.0.1"

    @property
    def postgres_port(self) -> int:
        return urlsplit(self.postgres_dsn).port or 5432

    @property
    def postgres_host(self) -> str:
        return urlsplit(self.postgres_dsn).hostname or "127.0.0.1"

    @property
    def cassandra_host_list(self) -> list[str]:
        return [h.strip() for h in self.cassandra_hosts.split(",") if h.strip()]

    @property
    def admin_key_file(self) -> Path:
        return self.local_dir / "admin.key"

    @property
    def unit_costs(self) -> dict[str, float]:
        """What one message costs on each channel."""
        return {
            "email": self.unit_cost_email,
            "sms": self.unit_cost_sms,
            "push": self.unit_cost_push,
            "in_app": self.unit_cost_in_app,
            "webhook": self.unit_cost_webhook,
        }

    @property
    def currency_codes(self) -> frozenset[str]:
        return frozenset(c.strip().upper() for c in self.currencies.split(",") if c.strip())

    @property
    def opt_in_channels(self) -> frozenset[str]:
        """Channels that need recorded consent before anything is sent on them (``gate_opt_in_channels``)."""
        return frozenset(c.strip() for c in self.gate_opt_in_channels.split(",") if c.strip())

    @property
    def audience_dir(self) -> Path:
        return self.local_dir / "audience"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()

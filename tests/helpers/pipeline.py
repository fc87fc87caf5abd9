"""A test campaign written straight into PostgreSQL, launched the way the API launches one
(``PipelineCampaign``), and the users and static segments it goes to."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from config import Settings, get_settings
from pipeline.pii import Keyring, contact_columns, sealed
from pipeline.pii_keys import pii_keyring
from schemas.campaigns import CampaignLaunch, LaunchVariant, campaign_key
from schemas.encoding import encode
from schemas.topics import CAMPAIGN_LAUNCHES, MESSAGE_REQUESTS
from tests.helpers.kafka import end_offsets

DEFAULT_CONTENT: dict[str, dict[str, Any]] = {
    "email": {"subject": "Hello {{ first_name }}", "html": "<p>Hi {{ first_name }}</p>", "text": "Hi"},
    "sms": {"body": "Hi {{ first_name }}"},
    "push": {"title": "Hello", "body": "Hi {{ first_name }}"},
    "in_app": {"title": "Hello", "body": "Hi {{ first_name }}"},
    "webhook": {"url": "http://127.0.0.1:8094/hook", "payload": {"text": "Hi {{ first_name }}"}},
}


def user_email(uid: int) -> str:
    return f"u{uid}@example.test"


def user_phone(uid: int) -> str:
    return f"+1555{uid % 10**7:07d}"


def _user_row(keyring: Keyring, uid: int, language: str) -> tuple:
    contact = contact_columns(keyring, user_email(uid), user_phone(uid))
    return (uid, contact["email_enc"], contact["email_idx"], contact["phone_enc"], contact["phone_idx"],
            f"First{uid % 1000}", "Tester", "US", language, "UTC", "{}", orjson.dumps([f"token-{uid}"]).decode())


async def insert_users(conn: asyncpg.Connection, user_ids: Sequence[int],
                       language: Callable[[int], str] = lambda uid: "en", keyring: Keyring | None = None) -> None:
    """Users with an email, a phone (encrypted, as ingestion stores them), a push token and ``language(uid)``."""
    keyring = keyring or pii_keyring(get_settings())
    await conn.copy_records_to_table(
        "users", records=[_user_row(keyring, uid, language(uid)) for uid in user_ids],
        columns=["user_id", "email_enc", "email_idx", "phone_enc", "phone_idx", "first_name", "last_name", "country",
                 "language", "timezone", "attributes", "push_tokens"],
    )


async def set_contact(conn: asyncpg.Connection, user_id: int, keyring: Keyring | None = None, **contact: str | None
                      ) -> None:
    """Change a stored user's ``email`` and/or ``phone`` (None: has none), as ingestion would store it."""
    keyring = keyring or pii_keyring(get_settings())
    for field, value in contact.items():
        enc, idx = sealed(keyring, field, value)
        await conn.execute(f"UPDATE users SET {field} = NULL, {field}_enc = $2, {field}_idx = $3 WHERE user_id = $1",
                           user_id, enc, idx)


async def insert_static_segment(conn: asyncpg.Connection, user_ids: Sequence[int], name: str) -> int:
    segment_id = await conn.fetchval(
        "INSERT INTO segments (name, criteria, dynamic, kind, size, last_computed_at)"
        " VALUES ($1, '{\"conditions\": []}'::jsonb, false, 'static', $2, now()) RETURNING segment_id",
        name, len(user_ids),
    )
    await conn.copy_records_to_table("segment_members", records=[(segment_id, u) for u in user_ids],
                                     columns=["segment_id", "user_id"])
    return segment_id


@dataclass
class PipelineCampaign:
    settings: Settings
    pool: asyncpg.Pool
    campaign_id: int
    segment_id: int
    user_ids: list[int]
    channels: list[str]
    content: dict[str, dict[str, Any]]
    variants: list[tuple[str, float]]
    budget: dict[str, Any] | None
    languages: dict[int, str]
    launches: list[CampaignLaunch] = field(default_factory=list)

    def launch_record(self, launch_id: uuid.UUID | None = None) -> CampaignLaunch:
        return CampaignLaunch(
            launch_id=launch_id or uuid.uuid4(), campaign_id=self.campaign_id, name=f"test {self.campaign_id}",
            type="immediate", segment_id=self.segment_id, channels=self.channels, content=self.content,
            variants=[LaunchVariant(id=v, weight=w) for v, w in self.variants], budget=self.budget,
            audience_size=len(self.user_ids), launched_at=datetime.now(timezone.utc),
        )

    async def commit_launch(self, record: CampaignLaunch) -> None:
        """What the API commits for a launch: status active, the launch id, the time."""
        await self.pool.execute(
            "UPDATE campaigns SET status = 'active', launch_id = $2, launched_at = $3, audience_size = $4,"
            " version = version + 1, updated_at = $3 WHERE campaign_id = $1",
            self.campaign_id, record.launch_id, record.launched_at, len(self.user_ids),
        )

    async def publish(self, record: CampaignLaunch) -> RecordMetadata:
        """Put the launch record on campaign-launches (as the API does); returns where it landed."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_brokers, acks="all")
        await producer.start()
        try:
            return await producer.send_and_wait(CAMPAIGN_LAUNCHES.name, encode(record), key=campaign_key(self.campaign_id))
        finally:
            await producer.stop()

    async def launch(self, record: CampaignLaunch | None = None) -> dict[TopicPartition, int]:
        """Commit and publish a launch (a new one unless given); returns message-requests' end offsets before it."""
        record = record or self.launch_record()
        offsets = await end_offsets(self.settings.kafka_brokers, MESSAGE_REQUESTS.name)
        await self.commit_launch(record)
        await self.publish(record)
        self.launches.append(record)
        return offsets

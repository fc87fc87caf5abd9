"""Typed records carried by Herald's Kafka topics.

Upstream systems write ``UserProfile`` to ``user-profiles`` and ``UserEvent`` to
``user-events`` as JSON. Anything that does not validate is sent to the
dead-letter topic as a ``DeadLetter`` with the reason and the original bytes.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator
from schemas.encoding import BIGINT_MAX
from schemas.preferences import Channel as ConsentChannel
from schemas.preferences import ConsentChange

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")  # E.164
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_TIMEZONES = frozenset(available_timezones())

# A fixed namespace so that an event without an id gets the same id on every replay.
EVENT_NAMESPACE = uuid.UUID("6f1c1f6e-2c55-4d7e-9a3a-4b8f3f0f7a11")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class UserProfile(BaseModel):
    """The latest known state of one user; ``user-profiles`` is compacted by user_id."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: int = Field(gt=0, le=BIGINT_MAX)
    email: str | None = Field(default=None, max_length=255)
    phone: str | None = Field(default=None, max_length=20)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    country: str | None = Field(default=None, min_length=2, max_length=2)
    language: str = Field(default="en", max_length=10)
    timezone: str = Field(default="UTC", max_length=50)
    attributes: dict[str, Any] = Field(default_factory=dict)
    push_tokens: list[str] = Field(default_factory=list, max_length=20)
    created_at: datetime | None = None
    updated_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    # Consent the upstream system recorded (a sign-up form's SMS box...), per channel: granted, source,
    # text_version (required when granted), at (the profile's updated_at if left out). Applied to the
    # user's preferences unless a newer decision is recorded there (pipeline/preferences_store.py).
    consent: dict[ConsentChannel, ConsentChange] | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("not an email address")
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and not _PHONE.match(value):
            raise ValueError("not an E.164 phone number (+ and 7 to 15 digits)")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is not None and not value.isalpha():
            raise ValueError("not an ISO 3166-1 alpha-2 country code")
        return value.upper() if value else value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if not _LANGUAGE.match(value):
            raise ValueError("not a language tag such as 'en' or 'pt-BR'")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if value not in _TIMEZONES:
            raise ValueError("not an IANA time zone such as 'Europe/Paris'")
        return value

    @field_validator("created_at", "updated_at")
    @classmethod
    def _aware_times(cls, value: datetime | None) -> datetime | None:
        return _aware(value) if value is not None else None


class UserEvent(BaseModel):
    """Something a user did: a product view, a purchase, an open or a click."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: uuid.UUID | None = None
    user_id: int = Field(gt=0, le=BIGINT_MAX)
    name: str
    occurred_at: datetime
    campaign_id: int | None = Field(default=None, gt=0)
    message_id: uuid.UUID | None = None
    channel: str | None = Field(default=None, max_length=20)
    revenue: Decimal | None = Field(default=None, ge=0, max_digits=18, decimal_places=4)
    properties: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _EVENT_NAME.match(value):
            raise ValueError("event names are lower-case words such as 'product_viewed'")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware_time(cls, value: datetime) -> datetime:
        return _aware(value)

    def stable_id(self) -> uuid.UUID:
        """The event's id, or one derived from its content, so a replay overwrites itself."""
        if self.event_id is not None:
            return self.event_id
        return uuid.uuid5(
            EVENT_NAMESPACE, f"{self.user_id}|{self.name}|{self.occurred_at.isoformat()}"
        )


class DeadLetter(BaseModel):
    """A record that a stage could not process, kept with why and where it came from."""

    source_topic: str
    partition: int
    offset: int
    stage: str
    reason: str
    key: str | None = None  # base64 of the original key bytes
    value: str  # base64 of the original value bytes
    failed_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

"""What a user agreed to receive: the record on ``preference-updates``.

PostgreSQL (``user_preferences``) is the source of truth; after every change
the API publishes the user's whole new state as a ``PreferenceUpdate`` to the
compacted ``preference-updates`` topic, keyed like ``user-profiles`` (the
user_id as ASCII decimal bytes), so the gate's per-user replica lives in the
same partition as the rest of that user's state and a replay of the topic
rebuilds it. Consumers take the last record per key as the state, in log
order; ``version`` counts a user's changes and helps spot gaps and duplicates.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from schemas.encoding import BIGINT_MAX

# The channels a person can opt in or out of (webhooks reach systems, not people).
CHANNELS: tuple[str, ...] = ("email", "sms", "push", "in_app")
Channel = Literal["email", "sms", "push", "in_app"]

# Kinds of message a person can opt out of on every channel at once. A user
# without a choice gets every category (True); see ``api.preferences``.
CATEGORIES: tuple[str, ...] = ("promotional", "transactional", "newsletters", "product_updates")
Category = Literal["promotional", "transactional", "newsletters", "product_updates"]

# Frequency caps count messages per channel over a rolling window of this many days.
FREQUENCY_CAP_WINDOW_DAYS = 7
MAX_FREQUENCY_CAP = 1000


def preference_key(user_id: int) -> bytes:
    """The Kafka key of a user's records: the same bytes ``user-profiles`` uses, so the partitions agree."""
    return str(user_id).encode("ascii")


class PreferenceUpdate(BaseModel):
    """One user's complete preferences after a change (never a diff: the topic is compacted)."""

    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(gt=0, le=BIGINT_MAX)
    channels: dict[Channel, bool] = Field(description="Whether each channel may be used at all")
    frequency_cap: dict[Channel, int] = Field(
        description=f"Most messages per channel in any {FREQUENCY_CAP_WINDOW_DAYS} days; absent means no cap"
    )
    frequency_cap_window_days: int = FREQUENCY_CAP_WINDOW_DAYS
    categories: dict[Category, bool]
    unsubscribed: list[Channel] = Field(description="The channels switched off, for quick suppression checks")
    updated_at: datetime | None = Field(description="Null for a user who never changed anything (the defaults)")
    version: int = Field(ge=0, description="How many changes this user's preferences have had")
    consented: list[Channel] = Field(
        default_factory=list,
        description="Channels with an explicit, granted consent: what an opt-in channel (Settings.gate_opt_in_channels)"
        " needs before anything goes out on it",
    )


# Where a consent decision came from: Herald's own paths, plus whatever an operator names through the API
# (a signup form, a checkout box...), as a short lowercase word (``CONSENT_SOURCE``).
ConsentSource = str
CONSENT_SOURCE = r"^[a-z][a-z0-9_]{0,39}$"


class Consent(BaseModel):
    """The last explicit decision about a channel: who made it, how, when, and which text was agreed to.

    ``source`` "default" (with ``at`` null) means nobody decided yet: the channel
    is on, as for every user upstream sends us, but a channel that needs opt-in
    (Settings.gate_opt_in_channels) gets nothing until consent is granted.
    """

    granted: bool
    at: datetime | None = None
    source: str = Field(default="default", max_length=40)
    text_version: str | None = Field(default=None, max_length=100, description="The terms' version agreed to")

    def explicit(self) -> bool:
        return self.source != "default"


def _all_categories() -> dict[str, bool]:
    return dict.fromkeys(CATEGORIES, True)


def _all_consent() -> dict[str, Consent]:
    return {channel: Consent(granted=True) for channel in CHANNELS}


class Preferences(BaseModel):
    """One user's preferences, as the API shows them and ``user_preferences`` stores them.

    A user without a row has the defaults: every channel on, no frequency
    caps, every category on.
    """

    user_id: int
    email_enabled: bool = True
    sms_enabled: bool = True
    push_enabled: bool = True
    in_app_enabled: bool = True
    frequency_cap: dict[Channel, int] = Field(
        default_factory=dict,
        description=f"Most messages per channel in any {FREQUENCY_CAP_WINDOW_DAYS} days; absent means no cap",
    )
    frequency_cap_window_days: int = FREQUENCY_CAP_WINDOW_DAYS
    categories: dict[Category, bool] = Field(default_factory=_all_categories)
    consent: dict[Channel, Consent] = Field(default_factory=_all_consent)
    updated_at: datetime | None = Field(default=None, description="Null until the first change")
    version: int = 0

    def enabled(self, channel: str) -> bool:
        return bool(getattr(self, f"{channel}_enabled"))

    def unsubscribed(self) -> list[str]:
        return [channel for channel in CHANNELS if not self.enabled(channel)]

    def to_update(self) -> PreferenceUpdate:
        """The record published to ``preference-updates`` for this state."""
        return PreferenceUpdate(
            user_id=self.user_id,
            channels={channel: self.enabled(channel) for channel in CHANNELS},
            frequency_cap=self.frequency_cap,
            categories=self.categories,
            unsubscribed=self.unsubscribed(),
            updated_at=self.updated_at,
            version=self.version,
            consented=[c for c in CHANNELS if self.enabled(c) and self.consent[c].granted and self.consent[c].explicit()],
        )


def stored_preferences(user_id: int, row: Mapping[str, Any] | None, opt_in: Collection[str] = ()) -> Preferences:
    """Preferences from a ``user_preferences`` row (JSON columns already decoded), defaults filled in.

    Only explicit choices are stored, so a category added later starts on for
    everyone, and names no longer known are dropped rather than failing a read.
    A channel in ``opt_in`` (Settings.gate_opt_in_channels) that nobody decided
    about shows consent not granted, as the gate treats it.
    """
    consent = _all_consent() | {c: Consent(granted=False) for c in opt_in if c in CHANNELS}
    if row is None:
        return Preferences(user_id=user_id, consent=consent)
    consent.update({c: Consent(**v) for c, v in (row["consent"] or {}).items() if c in CHANNELS})
    return Preferences(
        user_id=user_id,
        **{f"{channel}_enabled": row[f"{channel}_enabled"] for channel in CHANNELS},
        frequency_cap={c: int(v) for c, v in (row["frequency_cap"] or {}).items() if c in CHANNELS},
        categories=_all_categories() | {c: bool(v) for c, v in (row["categories"] or {}).items() if c in CATEGORIES},
        consent=consent,
        updated_at=row["updated_at"],
        version=row["version"],
    )


FrequencyCap = Annotated[int, Field(ge=1, le=MAX_FREQUENCY_CAP)]


class ConsentChange(BaseModel):
    """One channel's consent as recorded where the person gave or withdrew it (a form, a keyword...).

    Granting switches the channel on, withdrawing switches it off (an unsubscribe).
    """

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    granted: bool
    source: str = Field(pattern=CONSENT_SOURCE, description='Where it was given, e.g. "signup_form"')
    text_version: str | None = Field(default=None, min_length=1, max_length=100, validate_default=True,
                                     description='The terms\' version agreed to, e.g. "sms-terms-v3"')
    at: datetime | None = Field(default=None, description="When it was given; now if left out")

    @field_validator("source")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "default":
            raise ValueError('"default" means nobody decided; name where consent was given')
        return value

    @field_validator("text_version")
    @classmethod
    def _version_goes_with_a_grant(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("granted") is True:
            raise ValueError("required when consent is granted: the version of the text the person agreed to")
        return value

    @field_validator("at", mode="before")
    @classmethod
    def _parse_time(cls, value: object) -> object:
        # strict mode takes no strings for datetimes; JSON has nothing else
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("not an ISO 8601 date-time") from None
            if parsed.tzinfo is None:
                raise ValueError("needs a time zone offset, e.g. 2026-01-31T12:00:00Z")
            return parsed
        return value


class PreferencesPatch(BaseModel):
    """A partial change: only the fields present change.

    In ``frequency_cap`` a null removes that channel's cap; a cap of 0 is
    refused (switch the channel off instead, so the opt-out is recorded as one).
    ``unsubscribe_reason`` goes with switching a channel off.
    """

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    email_enabled: bool | None = None
    sms_enabled: bool | None = None
    push_enabled: bool | None = None
    in_app_enabled: bool | None = None
    frequency_cap: dict[Channel, FrequencyCap | None] | None = None
    categories: dict[Category, bool] | None = None
    consent: dict[Channel, ConsentChange] | None = None
    unsubscribe_reason: str | None = Field(default=None, min_length=1, max_length=500)

    @field_validator(
        "email_enabled", "sms_enabled", "push_enabled", "in_app_enabled", "frequency_cap", "categories", "consent"
    )
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Runs only for values the client sent: an explicit null is a mistake, not "no change".
        if value is None:
            raise ValueError("may be left out but not null")
        return value

    @field_validator("unsubscribe_reason")
    @classmethod
    def _reason_needs_an_opt_out(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Declared last, so every *_enabled field is in info.data by now.
        withdrawn = any(not c.granted for c in (info.data.get("consent") or {}).values())
        if value is not None and not withdrawn and not any(info.data.get(f"{c}_enabled") is False for c in CHANNELS):
            raise ValueError("only goes with switching a channel off, e.g. email_enabled: false")
        return value

    @field_validator("consent")
    @classmethod
    def _consent_agrees(cls, value: dict | None, info: ValidationInfo) -> dict | None:
        for channel, change in (value or {}).items():
            enabled = info.data.get(f"{channel}_enabled")
            if enabled is not None and enabled != change.granted:
                raise ValueError(f"{channel}: granted contradicts {channel}_enabled")
        return value

    def switched_off(self) -> list[str]:
        return [channel for channel in CHANNELS if getattr(self, f"{channel}_enabled") is False]


def apply_patch(current: Preferences, patch: PreferencesPatch, source: ConsentSource, now: datetime) -> Preferences:
    """The preferences after ``patch``: ``current`` itself when nothing changes, else version + 1."""
    changes: dict[str, Any] = {}
    for channel in CHANNELS:
        wanted = getattr(patch, f"{channel}_enabled")
        if wanted is not None and wanted != current.enabled(channel):
            changes[f"{channel}_enabled"] = wanted
    if patch.frequency_cap is not None:
        caps = dict(current.frequency_cap)
        for channel, cap in patch.frequency_cap.items():
            if cap is None:
                caps.pop(channel, None)
            else:
                caps[channel] = cap
        if caps != current.frequency_cap:
            changes["frequency_cap"] = caps
    if patch.categories is not None:
        categories = current.categories | patch.categories
        if categories != current.categories:
            changes["categories"] = categories
    after = _changed(current, changes, source, now)
    for channel, change in (patch.consent or {}).items():
        after = record_consent(after, channel, change.granted, change.source, now, change.text_version, change.at)
    return after


def upstream_consent(current: Preferences, changes: Mapping[str, ConsentChange], default_at: datetime,
                     now: datetime) -> Preferences:
    """The consent an upstream profile carries, applied channel by channel (``at`` missing: the profile's
    ``default_at``), except where the decision recorded is as new or newer: a profile read again (a replay,
    a compacted topic re-read) changes nothing, and an opt-out by keyword after the sign-up form stands.
    ``current`` itself when nothing changes."""
    out = current
    for channel in sorted(changes):
        change = changes[channel]
        at = change.at or default_at
        old = out.consent.get(channel)
        if old is not None and old.explicit() and old.at is not None and old.at >= at:
            continue
        out = record_consent(out, channel, change.granted, change.source, now, change.text_version, at)
    return out


def record_consent(current: Preferences, channel: str, granted: bool, source: ConsentSource, now: datetime,
                   text_version: str | None = None, at: datetime | None = None) -> Preferences:
    """The preferences with ``channel``'s consent given or withdrawn (``at``: when, if not ``now``), and the
    channel on or off with it; ``current`` itself when that same decision is already the one recorded."""
    consent = Consent(granted=granted, at=at or now, source=source, text_version=text_version)
    old = current.consent.get(channel)
    if current.enabled(channel) == granted and old is not None and old.explicit() and old.granted == granted \
            and old.source == source and old.text_version == text_version:
        return current
    return current.model_copy(update={
        f"{channel}_enabled": granted, "consent": {**current.consent, channel: consent},
        "updated_at": now, "version": current.version + 1,
    })


def switch_off(current: Preferences, channel: str, source: ConsentSource, now: datetime) -> Preferences:
    """The preferences with ``channel`` off (an unsubscribe link); ``current`` if it already was."""
    if not current.enabled(channel):
        return current
    return _changed(current, {f"{channel}_enabled": False}, source, now)


def _changed(current: Preferences, changes: dict[str, Any], source: ConsentSource, now: datetime) -> Preferences:
    if not changes:
        return current
    consent = dict(current.consent)
    for channel in CHANNELS:
        field = f"{channel}_enabled"
        if field in changes:
            consent[channel] = Consent(granted=changes[field], at=now, source=source)
    return current.model_copy(update=changes | {"consent": consent, "updated_at": now, "version": current.version + 1})


def switched_off(before: Preferences, after: Preferences) -> list[str]:
    """Channels that were on in ``before`` and are off in ``after``: each one is an opt-out to record."""
    return [c for c in CHANNELS if before.enabled(c) and not after.enabled(c)]

"""Records the API publishes when a campaign starts or changes course.

``campaign-launches`` carries ``CampaignLaunch``, ``campaign-control`` carries
``CampaignControl``; both are JSON, keyed by the campaign id as ASCII decimal
bytes (``campaign_key``), so every record of one campaign lands on one
partition in the order the API wrote it.

A launch record holds everything the explode stage needs without reading
PostgreSQL: audience, channels, content, A/B variants, budget. ``launch_id``
tells launches apart: a record delivered twice (a producer retry, a replay)
has the same id and must be processed once; a later launch of the same
campaign (a recurring run, a scheduled start) has a new one. The API commits
the campaign's new status after Kafka acknowledged the record, so a consumer
that wants to be strict may check ``campaigns.launch_id`` in PostgreSQL: a
record whose launch_id never got committed there belongs to a launch the API
answered with an error.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LaunchVariant(BaseModel):
    id: str
    weight: float = Field(gt=0)


class LaunchBudget(BaseModel):
    max_spend: float
    currency: str


class CampaignLaunch(BaseModel):
    """One launch of one campaign, as the explode stage consumes it."""

    model_config = ConfigDict(extra="forbid")

    launch_id: uuid.UUID
    campaign_id: int
    name: str
    type: Literal["immediate", "scheduled", "triggered", "recurring"]
    segment_id: int | None
    channels: list[str]
    # Per channel: {"template_id": id, "variables": {...}} and/or inline parts (see pipeline.campaigns).
    content: dict[str, dict[str, Any]]
    # Empty when the campaign has no A/B test: everyone gets the template's default content.
    variants: list[LaunchVariant] = Field(default_factory=list)
    budget: LaunchBudget | None = None
    trigger: dict[str, Any] | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # The audience size the API measured at launch, for progress and completion accounting.
    audience_size: int | None = None
    launched_at: datetime
    # A recurring campaign's run (its scheduled instant): part of each message's step, so
    # every run's messages have ids, dedup keys and send-ledger entries of their own.
    occurrence: datetime | None = None

    @property
    def step(self) -> str:
        """The journey step of this launch's messages: "send", or "send@<UTC instant>" for one run."""
        if self.occurrence is None:
            return "send"
        at = self.occurrence if self.occurrence.tzinfo else self.occurrence.replace(tzinfo=timezone.utc)
        return f"send@{at.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


class CampaignControl(BaseModel):
    """A change of course for a launched campaign: hold, continue, or drop what is not yet sent."""

    model_config = ConfigDict(extra="forbid")

    control_id: uuid.UUID
    campaign_id: int
    # expire: the scheduler's, at the campaign's end_time (its unsent messages are dropped as "expired")
    action: Literal["pause", "resume", "cancel", "complete", "expire"]
    previous_status: str
    status: str
    # The campaign's current launch, if it was launched (a cancelled draft has none).
    launch_id: uuid.UUID | None = None
    issued_at: datetime


def campaign_key(campaign_id: int) -> bytes:
    return str(campaign_id).encode("ascii")



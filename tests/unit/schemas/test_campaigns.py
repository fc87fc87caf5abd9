"""The Kafka records of launches and control: names, keys and the JSON the pipeline reads."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
import pytest
from pydantic import ValidationError

from schemas.campaigns import CampaignControl, CampaignLaunch, campaign_key
from schemas.encoding import encode

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)


def test_launch_and_control_topics_carry_their_records():
    from schemas.topics import CAMPAIGN_CONTROL, CAMPAIGN_LAUNCHES

    assert (CAMPAIGN_LAUNCHES.record, CAMPAIGN_CONTROL.record) == (CampaignLaunch, CampaignControl)


def test_records_are_keyed_by_the_campaign_id_in_ascii_decimal():
    assert campaign_key(789) == b"789"


def test_launch_record_round_trips_through_json():
    launch = CampaignLaunch(
        launch_id=uuid.uuid4(), campaign_id=7, name="Summer", type="immediate", segment_id=3,
        channels=["email"], content={"email": {"template_id": 4, "variables": {"code": "X"}}},
        variants=[{"id": "A", "weight": 50}, {"id": "B", "weight": 50}],
        budget={"max_spend": 100, "currency": "USD"}, audience_size=10, launched_at=NOW,
    )
    data = orjson.loads(encode(launch))
    assert data["launch_id"] == str(launch.launch_id) and data["budget"] == {"max_spend": 100.0, "currency": "USD"}
    assert CampaignLaunch.model_validate(data) == launch


def test_control_actions_are_closed():
    with pytest.raises(ValidationError):
        CampaignControl(control_id=uuid.uuid4(), campaign_id=1, action="explode", previous_status="active",
                        status="paused", issued_at=NOW)


def test_each_run_of_a_recurring_campaign_has_its_own_message_ids():
    from datetime import timedelta

    from schemas.messages import message_id

    def run(at):
        return CampaignLaunch(launch_id=uuid.uuid4(), campaign_id=7, name="Daily", type="recurring", segment_id=3,
                              channels=["email"], content={"email": {"subject": "s", "text": "t"}},
                              launched_at=NOW, occurrence=at)

    monday = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
    first, again, tuesday = run(monday), run(monday.astimezone(timezone(timedelta(hours=1)))), run(monday + timedelta(days=1))
    assert first.step == again.step == "send@20261123T090000Z"  # one instant, however it was written
    assert tuesday.step == "send@20261124T090000Z"
    ids = {message_id(7, 42, "email", launch.step) for launch in (first, tuesday)}
    assert len(ids) == 2
    one_off = CampaignLaunch.model_validate({**orjson.loads(encode(first)), "occurrence": None})
    assert one_off.step == "send"  # launches without a run keep the ids they always had

"""pipeline.attribution: last-touch attribution of conversion events to the messages that preceded them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from pipeline import attribution as at
from schemas.messages import DeliveryEvent, message_id
from schemas.records import UserEvent

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
USER = 555


def sent(campaign: int, when: datetime, channel: str = "email", variant: str | None = "A") -> DeliveryEvent:
    return DeliveryEvent(message_id=message_id(campaign, USER, channel), campaign_id=campaign, user_id=USER,
                         channel=channel, variant=variant, status="sent", at=when)


def buy(when: datetime, name: str = "purchase", revenue: str = "49.90") -> UserEvent:
    return UserEvent(event_id=uuid.uuid4(), user_id=USER, name=name, occurred_at=when, revenue=Decimal(revenue))


def stored(*events: DeliveryEvent, converted: tuple[int, ...] = ()) -> dict[int, dict]:
    fields = dict(at.touches_of(events).get(USER, {}))
    fields |= {f"c{c}": "1" for c in converted}
    return {USER: {k.encode(): v.encode() for k, v in fields.items()}}


GOALS = {1: at.goals_of(None), 2: at.goals_of({"conversion_events": ["purchase", "signup"],
                                               "attribution_window_days": 2})}


def test_the_last_touch_within_the_window_gets_the_conversion_with_its_revenue():
    touches = stored(sent(1, T0), sent(2, T0 + timedelta(hours=1)))
    [conv] = at.attribute_all([buy(T0 + timedelta(hours=5))], touches, GOALS)
    assert (conv.campaign_id, conv.status, conv.revenue, conv.reason) == (2, "converted", 49.9, "purchase")
    assert conv.message_id == message_id(2, USER, "email") and conv.variant == "A"
    # Past campaign 2's 2-day window, campaign 1 (30 days) still counts it.
    [later] = at.attribute_all([buy(T0 + timedelta(days=3))], touches, GOALS)
    assert later.campaign_id == 1
    assert at.attribute_all([buy(T0 + timedelta(days=31))], touches, GOALS) == []
    assert at.attribute_all([buy(T0 - timedelta(minutes=1))], touches, GOALS) == []  # before the message


def test_a_user_converts_once_per_campaign_and_only_on_the_campaigns_goal_events():
    touches = stored(sent(1, T0), sent(2, T0 + timedelta(hours=1)))
    first, second = at.attribute_all([buy(T0 + timedelta(hours=2)), buy(T0 + timedelta(hours=3))], touches, GOALS)
    assert (first.campaign_id, second.campaign_id) == (2, 1)
    assert at.attribute_all([buy(T0 + timedelta(hours=2))], stored(sent(1, T0), sent(2, T0), converted=(1, 2)),
                            GOALS) == []
    [signup] = at.attribute_all([buy(T0 + timedelta(hours=2), name="signup", revenue="0")], touches, GOALS)
    assert signup.campaign_id == 2 and signup.revenue == 0.0
    assert at.attribute_all([buy(T0 + timedelta(hours=2))], touches, {}) == []  # campaigns gone


def test_touches_keep_the_latest_message_per_campaign_and_ignore_other_statuses():
    later = sent(1, T0 + timedelta(hours=1), channel="sms", variant=None)
    touches = at.touches_of([sent(1, T0), later, later.model_copy(update={"status": "delivered",
                                                                         "at": T0 + timedelta(hours=2)})])
    [(_, value)] = touches[USER].items()
    parsed, converted = at.parse_touches({b"1": value.encode(), b"c9": b"1", b"junk": b"x", b"3": b"not|a|touch"})
    assert converted == {9}
    assert [(t.campaign_id, t.channel, t.variant) for t in parsed] == [(1, "sms", None)]


def test_goals_are_checked_field_by_field():
    assert at.goal_problems(None) == [] and at.goal_problems({}) == []
    assert at.goal_problems({"conversion_events": ["purchase"], "attribution_window_days": 7}) == []
    assert [f for f, _ in at.goal_problems({"conversion_events": [], "attribution_window_days": 0})] == \
        ["goals.conversion_events", "goals.attribution_window_days"]
    assert at.goal_problems({"attribution_window_days": True})[0][0] == "goals.attribution_window_days"
    assert at.goal_problems({"attribution_window_days": 91})[0][0] == "goals.attribution_window_days"
    assert at.goal_problems([1])[0][0] == "goals"


def test_only_records_naming_a_conversion_event_are_parsed():
    names = frozenset({"purchase", "signup"})
    assert at.might_convert(b'{"user_id": 1, "name": "purchase"}', names)
    assert not at.might_convert(b'{"user_id": 1, "name": "product_viewed"}', names)
    assert not at.might_convert(None, names)


def test_touches_come_from_the_sent_events_of_raw_records():
    import orjson

    records = [orjson.dumps({"events": [sent(1, T0).model_dump(mode="json"),
                                        {**sent(2, T0).model_dump(mode="json"), "status": "delivered"}]}),
               b"not json", None, orjson.dumps({"events": [{"status": "sent"}]})]
    [only] = at.sent_events(records)
    assert (only.campaign_id, only.status) == (1, "sent")

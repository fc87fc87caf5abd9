"""Campaigns over HTTP against the real stack: create, read, list, update, delete, launch, control.

Segments are created directly in PostgreSQL as static segments over fresh
test users (ids above 10**12), so audience sizes are exact and do not depend
on the segments API or on the demo audience.
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson
import pytest

from api.campaigns import Campaign
from tests.helpers.api import assert_error, bearer, unique_name
from schemas.topics import CAMPAIGN_CONTROL, CAMPAIGN_LAUNCHES
from tests.helpers.kafka import end_offsets, records_between

FUTURE = datetime.now(timezone.utc) + timedelta(days=30)



def _cents(amount: Decimal) -> float:
    """Money as the API answers it: to the cent, half up, a JSON number."""
    return float(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))

def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def pg(api_settings):
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def segment(pg):
    """Factory: a static segment of ``size`` new users; returns its id."""

    async def make(size: int = 3) -> int:
        base = 10**12 + random.randrange(10**14)
        ids = list(range(base, base + size))
        await pg.executemany("INSERT INTO users (user_id, email) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                             [(i, f"u{i}@example.com") for i in ids])
        segment_id = await pg.fetchval(
            "INSERT INTO segments (name, criteria, dynamic, size) VALUES ($1, '{}'::jsonb, false, $2)"
            " RETURNING segment_id", unique_name("segment"), size)
        await pg.executemany("INSERT INTO segment_members (segment_id, user_id) VALUES ($1, $2)",
                             [(segment_id, i) for i in ids])
        return segment_id

    return make


@pytest.fixture(scope="session")
def marketer(issue_key) -> str:
    return issue_key("marketer")["key"]


@pytest.fixture(scope="session")
def analyst(issue_key) -> str:
    return issue_key("analyst")["key"]


def campaign_body(segment_id: int | None, **overrides) -> dict:
    body = {
        "name": unique_name("campaign"),
        "description": "Promote summer collection",
        "type": "immediate",
        "channels": ["email", "push"],
        "end_time": iso(FUTURE),
        "target_segment_id": segment_id,
        "content": {
            "email": {"subject": "50% off, {{ first_name }}!", "html": "<p>Use {{ code }}</p>",
                      "variables": {"code": "SUMMER50"}},
            "push": {"title": "Summer Sale", "body": "Get 50% off now!", "action_url": "app://summer-sale"},
        },
        "budget": {"max_spend": 10000, "currency": "USD"},
        "ab_test": {"enabled": True, "variants": [{"id": "A", "weight": 50}, {"id": "B", "weight": 50}]},
    }
    body.update(overrides)
    return body


def create(client, key, body) -> dict:
    response = client.post("/api/v1/campaigns", headers=bearer(key), json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def audit_actions(pg, campaign_id: int) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT actor_key_id, action, before, after FROM audit_log WHERE entity_type = 'campaign'"
        " AND entity_id = $1 ORDER BY audit_id", str(campaign_id))


# ---------------------------------------------------------------- create


async def test_create_answers_a_draft_with_estimated_recipients_and_cost(client, marketer, segment, api_settings):
    segment_id = await segment(4)
    created = create(client, marketer, campaign_body(segment_id))

    assert created["status"] == "draft"
    assert created["estimated_recipients"] == 4
    per_user = Decimal(str(api_settings.unit_costs["email"])) + Decimal(str(api_settings.unit_costs["push"]))
    assert created["estimated_cost"] == _cents(4 * per_user)
    assert created["target_segment_id"] == segment_id
    assert created["channels"] == ["email", "push"]
    assert created["metrics"]["suppressed_by_reason"] == {}
    assert {name: value for name, value in created["metrics"].items() if name != "suppressed_by_reason"} == dict.fromkeys(
        ("sent", "delivered", "bounced", "failed", "opened", "clicked", "converted", "unsubscribed", "revenue",
         "queued", "deferred", "held", "cancelled", "suppressed", "expired"), 0)
    assert created["budget"] == {"max_spend": 10000, "currency": "USD"}
    assert isinstance(created["campaign_id"], int) and created["created_at"].endswith("Z")
    assert Campaign.model_validate(created).model_dump(mode="json").keys() == created.keys()


async def test_create_writes_an_audit_row_with_the_actor(client, issue_key, segment, pg):
    issued = issue_key("marketer")
    created = create(client, issued["key"], campaign_body(await segment(1)))

    (row,) = await audit_actions(pg, created["campaign_id"])
    assert row["action"] == "campaign.created" and row["before"] is None
    assert row["actor_key_id"] == issued["key_id"]
    assert orjson.loads(row["after"])["name"] == created["name"]


async def test_every_validation_problem_is_named_in_one_answer(client, marketer):
    body = campaign_body(
        987_654_321_987,
        channels=["email", "fax", "email", "sms"],
        start_time=iso(FUTURE + timedelta(days=2)),
        end_time=iso(FUTURE),
        budget={"max_spend": 0, "currency": "XYZ"},
        ab_test={"enabled": True, "variants": [{"id": "A", "weight": 70}, {"id": "B", "weight": 20}]},
    )
    error = assert_error(client.post("/api/v1/campaigns", headers=bearer(marketer), json=body), 422,
                         "validation_error")

    fields = {p["field"] for p in error["fields"]}
    assert {"channels.1", "channels.2", "end_time", "budget.max_spend", "budget.currency", "ab_test.variants",
            "content.sms", "content.push", "target_segment_id"} <= fields
    assert all(f in error["message"] for f in ("channels.1", "budget.currency", "target_segment_id"))


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"channels": []}, "channels"),
        ({"type": "weekly"}, "type"),
        ({"type": "scheduled"}, "start_time"),
        ({"type": "recurring", "schedule": {"cron": "every day", "timezone": "UTC"}}, "schedule.cron"),
        ({"type": "recurring", "schedule": {"cron": "0 9 * * *", "timezone": "Moon/Base"}}, "schedule.timezone"),
        ({"type": "triggered", "trigger": {"event": "Not An Event"}}, "trigger.event"),
        ({"type": "triggered", "trigger": {"event": "purchase", "where": [{"field": "amount", "operator": "bigger",
                                                                           "value": 5}]}},
         "trigger.where.conditions.0.operator"),
        ({"type": "triggered", "trigger": {"event": "purchase", "reentry": "sometimes"}}, "trigger.reentry"),
        ({"type": "triggered", "trigger": {"event": "purchase", "segment_id": 3}}, "trigger.segment_id"),
        ({"end_time": "2001-01-01T00:00:00Z"}, "end_time"),
        ({"budget": {"max_spend": 5, "currency": "ZZZ"}}, "budget.currency"),
        ({"ab_test": {"enabled": True, "variants": [{"id": "A", "weight": 50}, {"id": "A", "weight": 50}]}},
         "ab_test.variants.1.id"),
        ({"content": {"email": {"html": "<p>hi</p>"}, "push": {"body": "x"}}}, "content.email.subject"),
        ({"content": {"email": {"subject": "Hi {{ first_name", "text": "x"}, "push": {"body": "x"}}},
         "content.email.subject"),
        ({"content": {"email": {"subject": "Hi {{ coupon }}", "text": "x"}, "push": {"body": "x"}}},
         "content.email.variables"),
        ({"content": {"email": {"template_id": 9_000_000_000_001}, "push": {"body": "x"}}}, "content.email.template_id"),
        ({"target_segment_id": 9_000_000_000_001}, "target_segment_id"),
        ({"name": ""}, "name"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_each_validation_error_names_its_field(client, marketer, segment, overrides, field):
    body = campaign_body(await segment(1), **overrides)
    error = assert_error(client.post("/api/v1/campaigns", headers=bearer(marketer), json=body), 422,
                         "validation_error")
    assert field in [p["field"] for p in error["fields"]], error


async def stored_template(pg, channel: str, parts: dict, variants: dict | None = None) -> int:
    return await pg.fetchval(
        "INSERT INTO templates (name, channel, body, parts, variants) VALUES ($1, $2, '', $3::jsonb, $4::jsonb)"
        " RETURNING template_id", unique_name("template"), channel, orjson.dumps(parts).decode(),
        orjson.dumps(variants or {}).decode())


async def test_template_variables_must_resolve_with_the_campaigns_variables(client, marketer, segment, pg):
    template_id = await stored_template(pg, "email", {"subject": "Hi {{ first_name }}", "html": "<p>{{ code }}</p>"},
                                        {"B": {"subject": "{{ code }} inside"}})
    segment_id = await segment(1)
    push = {"title": "t", "body": "b"}

    ok = campaign_body(segment_id, content={"email": {"template_id": template_id, "variables": {"code": "X"}},
                                            "push": push})
    assert create(client, marketer, ok)["content"]["email"]["template_id"] == template_id
    missing = campaign_body(segment_id, content={"email": {"template_id": template_id}, "push": push})
    error = assert_error(client.post("/api/v1/campaigns", headers=bearer(marketer), json=missing), 422,
                         "validation_error")
    assert error["fields"] == [{"field": "content.email.variables",
                                "reason": "no value for template variable(s): code"}]


async def test_a_template_of_another_channel_is_refused(client, marketer, segment, pg):
    sms_template = await stored_template(pg, "sms", {"body": "Hello"})
    body = campaign_body(await segment(1), content={"email": {"template_id": sms_template},
                                                    "push": {"title": "t", "body": "b"}})
    error = assert_error(client.post("/api/v1/campaigns", headers=bearer(marketer), json=body), 422,
                         "validation_error")
    assert error["fields"][0]["field"] == "content.email.template_id" and "sms" in error["fields"][0]["reason"]


async def test_triggered_campaign_needs_no_segment(client, marketer):
    trigger = {"event": "cart_abandoned", "where": [{"field": "total", "operator": "greater_than", "value": 20}],
               "reentry": "window", "reentry_window": "7_days", "dedup_key": "cart_id"}
    body = campaign_body(None, type="triggered", trigger=trigger, ab_test=None)
    created = create(client, marketer, body)
    assert created["trigger"] == trigger
    assert created["estimated_recipients"] is None


def test_analyst_may_read_but_not_create(client, analyst, marketer):
    assert_error(client.post("/api/v1/campaigns", headers=bearer(analyst), json=campaign_body(None)), 403, "forbidden")
    assert client.get("/api/v1/campaigns?limit=1", headers=bearer(analyst)).status_code == 200


def test_campaigns_need_a_key(client):
    assert_error(client.get("/api/v1/campaigns"), 401, "unauthorized")
    assert_error(client.post("/api/v1/campaigns", json={}), 401, "unauthorized")


# ---------------------------------------------------------------- read and list


async def test_get_shows_the_pipelines_live_metrics_from_redis(client, marketer, segment, api_settings):
    from redis.asyncio import Redis

    created = create(client, marketer, campaign_body(await segment(1)))
    assert client.post(f"/api/v1/campaigns/{created['campaign_id']}/launch", headers=bearer(marketer)).is_success
    redis = Redis.from_url(api_settings.redis_url)
    key = f"campaign:{created['campaign_id']}:metrics"
    try:
        await redis.hset(key, mapping={"sent": 145, "delivered": 142, "opened": 45, "revenue": "1750.5",
                                       "budget_spent": "72.5", "suppressed": 7, "suppressed:frequency_cap": 5,
                                       "suppressed:unsubscribed": 2})
        got = client.get(f"/api/v1/campaigns/{created['campaign_id']}", headers=bearer(marketer))
    finally:
        await redis.delete(key)

    assert got.status_code == 200
    body = got.json()
    metrics = body["metrics"]
    assert {name: metrics[name] for name in ("sent", "delivered", "opened", "clicked", "converted", "revenue")} == {
        "sent": 145, "delivered": 142, "opened": 45, "clicked": 0, "converted": 0, "revenue": 1750.5}
    assert metrics["suppressed"] == 7
    assert metrics["suppressed_by_reason"] == {"frequency_cap": 5, "unsubscribed": 2}
    assert body["budget_spent"] == 72.5
    assert got.headers["etag"] == f'"{body["version"]}"'


def test_unknown_campaign_is_404(client, marketer):
    for response in (client.get("/api/v1/campaigns/9000000000000001", headers=bearer(marketer)),
                     client.patch("/api/v1/campaigns/9000000000000001", headers=bearer(marketer), json={}),
                     client.delete("/api/v1/campaigns/9000000000000001", headers=bearer(marketer)),
                     client.post("/api/v1/campaigns/9000000000000001/launch", headers=bearer(marketer)),
                     client.get(f"/api/v1/campaigns/{2**64}", headers=bearer(marketer))):
        assert_error(response, 404, "not_found")


async def test_list_pages_newest_first_without_gaps_or_repeats(client, marketer, segment):
    segment_id = await segment(1)
    mine = [create(client, marketer, campaign_body(segment_id))["campaign_id"] for _ in range(5)]

    seen: list[int] = []
    cursor = None
    while True:
        url = "/api/v1/campaigns?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=bearer(marketer)).json()
        assert len(page["campaigns"]) <= 2
        seen += [c["campaign_id"] for c in page["campaigns"]]
        cursor = page["next_cursor"]
        if cursor is None or seen[-1] < min(mine):
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    assert [c for c in seen if c in mine] == sorted(mine, reverse=True)


async def test_list_filters_by_status_type_and_channel(client, marketer, segment):
    segment_id = await segment(1)
    sms_triggered = create(client, marketer, campaign_body(
        None, type="triggered", trigger={"event": "signup"}, channels=["sms"], ab_test=None,
        content={"sms": {"body": "Welcome {{ first_name }}"}}))
    email = create(client, marketer, campaign_body(segment_id))

    got = client.get("/api/v1/campaigns?status=draft&type=triggered&channel=sms&limit=200",
                     headers=bearer(marketer)).json()["campaigns"]
    assert all(c["status"] == "draft" and c["type"] == "triggered" and "sms" in c["channels"] for c in got)
    ids = [c["campaign_id"] for c in got]
    assert sms_triggered["campaign_id"] in ids and email["campaign_id"] not in ids


def test_list_refuses_unknown_filters_and_bad_cursors(client, marketer):
    error = assert_error(client.get("/api/v1/campaigns?status=archived&channel=fax&limit=0&cursor=zz",
                                    headers=bearer(marketer)), 422, "validation_error")
    assert {p["field"] for p in error["fields"]} == {"status", "channel", "limit"}
    error = assert_error(client.get("/api/v1/campaigns?cursor=bm9wZQ", headers=bearer(marketer)), 422,
                         "validation_error")
    assert error["fields"][0]["field"] == "cursor"


# ---------------------------------------------------------------- update and delete


async def test_patch_changes_a_draft_and_bumps_its_version(client, marketer, segment, pg, api_settings):
    created = create(client, marketer, campaign_body(await segment(2)))
    bigger = await segment(5)
    url = f"/api/v1/campaigns/{created['campaign_id']}"

    patched = client.patch(url, headers={**bearer(marketer), "If-Match": f'"{created["version"]}"'},
                           json={"name": "renamed", "target_segment_id": bigger, "channels": ["email"],
                                 "content": {"email": {"subject": "s", "text": "t"}}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["name"] == "renamed" and body["version"] == created["version"] + 1
    assert body["estimated_recipients"] == 5
    assert body["estimated_cost"] == _cents(5 * Decimal(str(api_settings.unit_costs["email"])))
    assert [r["action"] for r in await audit_actions(pg, created["campaign_id"])] == ["campaign.created",
                                                                                      "campaign.updated"]


async def test_patch_with_a_stale_version_is_412(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}"
    assert client.patch(url, headers=bearer(marketer), json={"description": "one"}).status_code == 200
    stale = client.patch(url, headers={**bearer(marketer), "If-Match": f'"{created["version"]}"'},
                         json={"description": "two"})
    assert_error(stale, 412, "precondition_failed")


async def test_patch_validates_the_merged_campaign(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    error = assert_error(client.patch(f"/api/v1/campaigns/{created['campaign_id']}", headers=bearer(marketer),
                                      json={"channels": ["email", "push", "sms"]}), 422, "validation_error")
    assert [p["field"] for p in error["fields"]] == ["content.sms"]


async def test_delete_removes_a_draft_and_audits_it(client, marketer, segment, pg):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}"

    assert client.delete(url, headers=bearer(marketer)).status_code == 204
    assert_error(client.get(url, headers=bearer(marketer)), 404, "not_found")
    rows = await audit_actions(pg, created["campaign_id"])
    assert rows[-1]["action"] == "campaign.deleted" and rows[-1]["after"] is None


# ---------------------------------------------------------------- launch and control


async def test_launch_publishes_exactly_one_launch_record_and_activates(client, marketer, segment, api_settings, pg):
    segment_id = await segment(3)
    created = create(client, marketer, campaign_body(segment_id))
    campaign_id = created["campaign_id"]
    before = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)

    launched = client.post(f"/api/v1/campaigns/{campaign_id}/launch", headers=bearer(marketer))

    assert launched.status_code == 200, launched.text
    result = launched.json()
    assert result["campaign_id"] == campaign_id and result["status"] == "active" and result["launched_at"]
    after = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)
    records = await records_between(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name, before, after)
    mine = [(k, r) for k, r in records if r["campaign_id"] == campaign_id]
    assert len(mine) == 1
    key, record = mine[0]
    assert key == str(campaign_id).encode()
    assert record["launch_id"] == result["launch_id"]
    assert record["segment_id"] == segment_id and record["channels"] == ["email", "push"]
    assert record["content"]["email"]["variables"] == {"code": "SUMMER50"}
    assert record["variants"] == [{"id": "A", "weight": 50.0}, {"id": "B", "weight": 50.0}]
    assert record["budget"] == {"max_spend": 10000.0, "currency": "USD"}
    assert record["audience_size"] == 3

    got = client.get(f"/api/v1/campaigns/{campaign_id}", headers=bearer(marketer)).json()
    assert got["status"] == "active" and got["audience_size"] == 3 and got["launch_id"] == result["launch_id"]
    assert [r["action"] for r in await audit_actions(pg, campaign_id)] == ["campaign.created", "campaign.launched"]


async def test_second_launch_is_409_naming_the_allowed_transitions(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}/launch"
    assert client.post(url, headers=bearer(marketer)).status_code == 200

    error = assert_error(client.post(url, headers=bearer(marketer)), 409, "illegal_transition")
    assert "paused, completed, cancelled" in error["message"]
    assert error["fields"] == [{"field": "status", "reason": "allowed from active: paused, completed, cancelled, scheduled"}]


async def test_illegal_status_change_is_409_naming_the_allowed_ones(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    error = assert_error(client.patch(f"/api/v1/campaigns/{created['campaign_id']}", headers=bearer(marketer),
                                      json={"status": "paused"}), 409, "illegal_transition")
    assert "draft" in error["message"] and "scheduled, active, cancelled" in error["message"]


async def test_launch_with_a_future_start_schedules_without_a_record(client, marketer, segment, api_settings):
    start = FUTURE - timedelta(days=1)
    created = create(client, marketer, campaign_body(await segment(1), type="scheduled", start_time=iso(start)))
    before = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)

    result = client.post(f"/api/v1/campaigns/{created['campaign_id']}/launch", headers=bearer(marketer)).json()

    assert result["status"] == "scheduled" and result["launched_at"] is None
    assert datetime.fromisoformat(result["scheduled_for"]) == start.replace(microsecond=start.microsecond)
    after = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)
    records = await records_between(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name, before, after)
    assert not [r for _, r in records if r["campaign_id"] == created["campaign_id"]]

    again = client.post(f"/api/v1/campaigns/{created['campaign_id']}/launch", headers=bearer(marketer))
    error = assert_error(again, 409, "illegal_transition")
    assert "scheduled" in error["message"] and "active, cancelled" in error["message"]


async def test_pause_resume_cancel_publish_control_records_and_audit(client, marketer, segment, api_settings, pg):
    created = create(client, marketer, campaign_body(await segment(2)))
    campaign_id = created["campaign_id"]
    url = f"/api/v1/campaigns/{campaign_id}"
    launch_id = client.post(f"{url}/launch", headers=bearer(marketer)).json()["launch_id"]
    before = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_CONTROL.name)

    statuses = [client.patch(url, headers=bearer(marketer), json={"status": s}).json()["status"]
                for s in ("paused", "active", "cancelled")]

    assert statuses == ["paused", "active", "cancelled"]
    after = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_CONTROL.name)
    records = [(k, r) for k, r in await records_between(api_settings.kafka_brokers, CAMPAIGN_CONTROL.name, before, after)
               if r["campaign_id"] == campaign_id]
    assert [r["action"] for _, r in records] == ["pause", "resume", "cancel"]
    assert {k for k, _ in records} == {str(campaign_id).encode()}
    assert all(r["launch_id"] == launch_id for _, r in records)
    assert [(r["previous_status"], r["status"]) for _, r in records] == [
        ("active", "paused"), ("paused", "active"), ("active", "cancelled")]
    actions = [r["action"] for r in await audit_actions(pg, campaign_id)]
    assert actions == ["campaign.created", "campaign.launched", "campaign.paused", "campaign.resumed",
                       "campaign.cancelled"]
    got = client.get(url, headers=bearer(marketer)).json()
    assert got["cancelled_at"] and got["paused_at"]


async def test_launched_campaign_content_is_frozen_but_name_is_not(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}"
    client.post(f"{url}/launch", headers=bearer(marketer))

    error = assert_error(client.patch(url, headers=bearer(marketer), json={"channels": ["email"]}), 409,
                         "campaign_frozen")
    assert error["fields"][0]["field"] == "channels"
    assert client.patch(url, headers=bearer(marketer), json={"name": "still editable"}).json()["name"] == \
        "still editable"


async def test_patch_cannot_launch_a_draft(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    assert_error(client.patch(f"/api/v1/campaigns/{created['campaign_id']}", headers=bearer(marketer),
                              json={"status": "active"}), 409, "launch_required")


async def test_only_drafts_can_be_deleted(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}"
    client.post(f"{url}/launch", headers=bearer(marketer))

    error = assert_error(client.delete(url, headers=bearer(marketer)), 409, "not_deletable")
    assert "cancel it first" in error["message"]
    client.patch(url, headers=bearer(marketer), json={"status": "cancelled"})
    error = assert_error(client.delete(url, headers=bearer(marketer)), 409, "not_deletable")
    assert "kept for reporting" in error["message"]


async def test_cancelled_campaign_is_final(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}"
    assert client.patch(url, headers=bearer(marketer), json={"status": "cancelled"}).status_code == 200
    error = assert_error(client.post(f"{url}/launch", headers=bearer(marketer)), 409, "illegal_transition")
    assert "none (final)" in error["message"]


async def test_analyst_cannot_launch_or_change(client, analyst, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}"
    assert_error(client.post(f"{url}/launch", headers=bearer(analyst)), 403, "forbidden")
    assert_error(client.patch(url, headers=bearer(analyst), json={"name": "x"}), 403, "forbidden")
    assert_error(client.delete(url, headers=bearer(analyst)), 403, "forbidden")


async def test_launch_that_kafka_refuses_is_503_and_changes_nothing(api_settings, marketer, segment, pg,
                                                                     monkeypatch):
    """A real producer that has been stopped never gets an acknowledgement: 503, and the transaction rolls back."""
    from aiokafka import AIOKafkaProducer
    from starlette.testclient import TestClient

    from api.app import create_app
    from pipeline import launches

    monkeypatch.setattr(launches, "PUBLISH_TIMEOUT_S", 0.5)

    with TestClient(create_app(api_settings)) as own:
        created = create(own, marketer, campaign_body(await segment(1)))
        working = own.app.state.kafka

        async def stopped_producer() -> AIOKafkaProducer:  # on the app's own event loop
            producer = AIOKafkaProducer(bootstrap_servers=api_settings.kafka_brokers)
            await producer.start()
            await producer.stop()
            return producer

        own.app.state.kafka = own.portal.call(stopped_producer)
        try:
            response = own.post(f"/api/v1/campaigns/{created['campaign_id']}/launch", headers=bearer(marketer))
        finally:
            own.app.state.kafka = working

        assert_error(response, 503, "unavailable")
        row = await pg.fetchrow("SELECT status, launch_id, version FROM campaigns WHERE campaign_id = $1",
                                created["campaign_id"])
        assert (row["status"], row["launch_id"], row["version"]) == ("draft", None, created["version"])
        assert [r["action"] for r in await audit_actions(pg, created["campaign_id"])] == ["campaign.created"]


async def test_a_birthday_campaign_launches_into_daily_runs_from_the_next_midnight_utc(client, marketer, segment,
                                                                                      api_settings):
    body = campaign_body(await segment(1), type="triggered", trigger={"date_field": "attributes.birthday"},
                         delivery={"local_time": "09:00"})
    created = create(client, marketer, body)
    before = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)

    response = client.post(f"/api/v1/campaigns/{created['campaign_id']}/launch", headers=bearer(marketer))
    result = response.json()

    assert response.status_code == 200 and result["status"] == "scheduled", response.text
    first = datetime.fromisoformat(result["scheduled_for"])
    now = datetime.now(timezone.utc)
    assert (first.hour, first.minute, first.second) == (0, 0, 0) and now < first <= now + timedelta(days=1)
    after = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)
    records = await records_between(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name, before, after)
    assert not [r for _, r in records if r["campaign_id"] == created["campaign_id"]]  # the scheduler fires it


def test_a_birthday_campaign_needs_a_profile_date_and_a_local_hour(client, marketer):
    body = campaign_body(None, type="triggered", trigger={"date_field": "birthday"})
    response = client.post("/api/v1/campaigns", headers=bearer(marketer), json=body)
    fields = {f["field"] for f in assert_error(response, 422, "validation_error")["fields"]}
    assert {"trigger.date_field", "delivery.local_time", "target_segment_id"} <= fields


async def test_scheduled_campaign_whose_time_has_come_launches(client, marketer, segment, pg, api_settings):
    created = create(client, marketer, campaign_body(await segment(2), type="scheduled",
                                                     start_time=iso(FUTURE - timedelta(days=1))))
    url = f"/api/v1/campaigns/{created['campaign_id']}/launch"
    assert client.post(url, headers=bearer(marketer)).json()["status"] == "scheduled"
    await pg.execute("UPDATE campaigns SET start_time = now() - interval '1 minute' WHERE campaign_id = $1",
                     created["campaign_id"])
    before = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)

    result = client.post(url, headers=bearer(marketer)).json()

    assert result["status"] == "active" and result["audience_size"] == 2
    after = await end_offsets(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name)
    records = await records_between(api_settings.kafka_brokers, CAMPAIGN_LAUNCHES.name, before, after)
    assert [r["launch_id"] for _, r in records if r["campaign_id"] == created["campaign_id"]] == [result["launch_id"]]


# ---------------------------------------------------------------- delivery at each recipient's local hour


async def test_local_hour_delivery_is_stored_and_answered_with_its_default(client, marketer, segment, pg):
    created = create(client, marketer, campaign_body(await segment(1), delivery={"local_time": "09:00"}))
    expected = {"local_time": "09:00", "if_passed": "next_day", "timezone": None}
    assert created["delivery"] == expected
    fetched = client.get(f"/api/v1/campaigns/{created['campaign_id']}", headers=bearer(marketer)).json()
    assert fetched["delivery"] == expected
    stored = await pg.fetchval("SELECT delivery FROM campaigns WHERE campaign_id = $1", created["campaign_id"])
    assert orjson.loads(stored) == expected


async def test_a_campaign_without_the_option_answers_delivery_null(client, marketer, segment):
    assert create(client, marketer, campaign_body(await segment(1)))["delivery"] is None


@pytest.mark.parametrize(
    ("delivery", "field"),
    [
        ({"local_time": "9:00"}, "delivery.local_time"),
        ({"local_time": "24:00"}, "delivery.local_time"),
        ({"local_time": "09:00:30"}, "delivery.local_time"),
        ({"local_time": "nine"}, "delivery.local_time"),
        ({"local_time": 900}, "delivery.local_time"),
        ({"if_passed": "skip"}, "delivery.local_time"),
        ({"local_time": "09:00", "if_passed": "send_now"}, "delivery.if_passed"),
        ({"local_time": "09:00", "timezone": "Mars/Olympus"}, "delivery.timezone"),
        ({"local_time": "09:00", "surprise": 1}, "delivery.surprise"),
        ("09:00", "delivery"),
    ],
)
async def test_a_bad_delivery_option_is_a_422_naming_its_field(client, marketer, segment, delivery, field):
    body = campaign_body(await segment(1), delivery=delivery)
    error = assert_error(client.post("/api/v1/campaigns", headers=bearer(marketer), json=body), 422,
                         "validation_error")
    assert field in [p["field"] for p in error["fields"]], error


async def test_a_triggered_campaign_has_no_local_hour(client, marketer):
    body = campaign_body(None, type="triggered", trigger={"event": "cart_abandoned"},
                         delivery={"local_time": "09:00"})
    error = assert_error(client.post("/api/v1/campaigns", headers=bearer(marketer), json=body), 422,
                         "validation_error")
    assert [p["field"] for p in error["fields"]] == ["delivery"], error


async def test_patch_sets_checks_and_removes_the_local_hour(client, marketer, segment):
    created = create(client, marketer, campaign_body(await segment(1)))
    url = f"/api/v1/campaigns/{created['campaign_id']}"
    option = {"local_time": "18:30", "if_passed": "skip", "timezone": "Asia/Kolkata"}
    patched = client.patch(url, headers=bearer(marketer), json={"delivery": option})
    assert patched.status_code == 200, patched.text
    assert patched.json()["delivery"] == option and patched.json()["version"] == created["version"] + 1

    error = assert_error(client.patch(url, headers=bearer(marketer),
                                      json={"delivery": {"local_time": "18:30", "if_passed": "tomorrow"}}),
                         422, "validation_error")
    assert [p["field"] for p in error["fields"]] == ["delivery.if_passed"]
    assert client.get(url, headers=bearer(marketer)).json()["delivery"] == option  # the bad PATCH changed nothing

    removed = client.patch(url, headers=bearer(marketer), json={"delivery": None})
    assert removed.status_code == 200, removed.text
    assert removed.json()["delivery"] is None


def test_the_openapi_document_describes_the_delivery_option(client):
    schemas = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert "delivery" in schemas["NewCampaign"]["properties"] and "delivery" in schemas["Campaign"]["properties"]
    delivery = schemas["Delivery"]
    assert delivery["required"] == ["local_time"]
    assert delivery["properties"]["if_passed"]["enum"] == ["next_day", "skip"]
    assert delivery["properties"]["if_passed"]["default"] == "next_day"

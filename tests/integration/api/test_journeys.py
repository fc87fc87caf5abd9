"""Journeys over HTTP against the real stack: author, validate, publish, stop, delete, progress.

Templates and segments are written straight into PostgreSQL; the progress counters are written
straight into Redis, in the shapes the journey workers and the aggregate keep them (that is the
contract with the workers: ``flow:j<id>:progress`` and ``campaign:<id>:metrics``).
"""

from __future__ import annotations

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from api.journeys import JourneyView, Progress
from schemas.keys import FLOWS_CHANGED, flow_progress_key, metrics_key, status_key
from tests.helpers.api import assert_error, bearer, unique_name


@pytest.fixture
async def pg(api_settings):
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def redis(api_settings):
    client = Redis.from_url(api_settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
async def no_journey_left_live(pg, redis):
    """Stop what a test published: a live journey on "signup" would enter other tests' users (workers run
    later in the same session) and send them its messages."""
    first = await pg.fetchval("SELECT coalesce(max(journey_id), 0) FROM journeys")
    yield
    stopped = await pg.fetch("UPDATE journeys SET status = 'stopped', stopped_at = now()"
                             " WHERE journey_id > $1 AND status = 'live' RETURNING journey_id", first)
    if stopped:
        await redis.incr(FLOWS_CHANGED)


@pytest.fixture(scope="session")
def marketer(issue_key) -> str:
    return issue_key("marketer")["key"]


@pytest.fixture(scope="session")
def analyst(issue_key) -> str:
    return issue_key("analyst")["key"]


@pytest.fixture
async def template(pg):
    """Factory: a stored template of ``channel``; returns its id."""

    async def make(channel: str) -> int:
        parts = {"email": {"subject": "Welcome", "html": "<p>Hi {{ first_name }}</p>"}}.get(channel, {"body": "Hi"})
        return await pg.fetchval(
            "INSERT INTO templates (name, channel, body, parts) VALUES ($1, $2, '', $3::jsonb) RETURNING template_id",
            unique_name("template"), channel, orjson.dumps(parts).decode())

    return make


@pytest.fixture
async def templates(template) -> dict[str, int]:
    return {"email": await template("email"), "sms": await template("sms")}


def journey_body(templates: dict[str, int], **overrides) -> dict:
    """Signup → welcome email → wait for it to be opened (1 day) → else an SMS nudge (A/B) → exit."""
    body = {
        "name": unique_name("journey"),
        "description": "Welcome series",
        "goal": {"event": "purchase"},
        "nodes": [
            {"id": "start", "type": "entry", "event": "signup", "next": "welcome"},
            {"id": "welcome", "type": "send", "channel": "email", "template_id": templates["email"],
             "variables": {"code": "HELLO10"}, "next": "opened"},
            {"id": "opened", "type": "wait_for_event", "event": "opened", "of": "welcome", "timeout": "1_day",
             "next": "done", "timeout_next": "nudge"},
            {"id": "nudge", "type": "send", "channel": "sms", "template_id": templates["sms"],
             "variants": [{"id": "A", "weight": 50}, {"id": "B", "weight": 50}], "next": "done"},
            {"id": "done", "type": "exit"},
        ],
    }
    body.update(overrides)
    return body


def create(client, key, body) -> dict:
    response = client.post("/api/v1/journeys", headers=bearer(key), json=body)
    assert response.status_code == 201, response.text
    return response.json()


def publish(client, key, journey_id: int) -> dict:
    response = client.post(f"/api/v1/journeys/{journey_id}/publish", headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


async def audit_actions(pg, entity_type: str, entity_id: int) -> list[str]:
    rows = await pg.fetch("SELECT action FROM audit_log WHERE entity_type = $1 AND entity_id = $2 ORDER BY audit_id",
                          entity_type, str(entity_id))
    return [r["action"] for r in rows]


def flows_changed_stamp(value: bytes | None) -> int:
    return int(value or 0)


# ---------------------------------------------------------------- create and read


async def test_create_answers_the_stored_draft(client, marketer, templates, pg):
    body = journey_body(templates)
    response = client.post("/api/v1/journeys", headers=bearer(marketer), json=body)

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "draft" and created["live_version"] is None and created["version"] == 1
    assert created["name"] == body["name"] and created["description"] == "Welcome series"
    assert created["definition"] == body
    assert created["created_at"].endswith("Z") and created["published_at"] is None
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"] == f"/api/v1/journeys/{created['journey_id']}"
    assert JourneyView.model_validate(created).model_dump(mode="json").keys() == created.keys()
    assert await audit_actions(pg, "journey", created["journey_id"]) == ["journey.created"]

    got = client.get(f"/api/v1/journeys/{created['journey_id']}", headers=bearer(marketer))
    assert got.status_code == 200 and got.json() == created and got.headers["ETag"] == '"1"'


def _unreachable(nodes: list[dict]) -> list[dict]:
    return nodes + [{"id": "orphan", "type": "exit"}]


def _loop(nodes: list[dict]) -> list[dict]:
    """welcome → check → welcome, with no wait on the way."""
    looped = [dict(n) for n in nodes]
    looped[1]["next"] = "check"
    return looped + [{"id": "check", "type": "condition", "if": {"converted": True}, "then": "done",
                      "else": "welcome"}]


def _node(nodes: list[dict], node_id: str, **changes) -> list[dict]:
    return [{**n, **changes} if n["id"] == node_id else n for n in nodes]


@pytest.mark.parametrize("change, field, node", [
    (_unreachable, "nodes.5", "orphan"),
    (_loop, "nodes.1", "welcome"),
    (lambda nodes: _node(nodes, "welcome", channel="fax"), "nodes.1.channel", "welcome"),
    (lambda nodes: _node(nodes, "nudge", template_id=9_000_000_000_001), "nodes.3.template_id", "nudge"),
    (lambda nodes: _node(nodes, "nudge", next="nowhere"), "nodes.3", "nudge"),
    (lambda nodes: _node(nodes, "opened", timeout="soon"), "nodes.2.timeout", "opened"),
])
def test_an_invalid_graph_is_a_422_naming_the_node(client, marketer, templates, change, field, node):
    body = journey_body(templates)
    body["nodes"] = change(body["nodes"])
    error = assert_error(client.post("/api/v1/journeys", headers=bearer(marketer), json=body), 422,
                         "validation_error")

    problems = {p["field"]: p["reason"] for p in error["fields"]}
    assert field in problems, error
    assert repr(node) in problems[field]
    assert field in error["message"]


def test_a_template_of_another_channel_is_refused_naming_the_node(client, marketer, templates):
    body = journey_body(templates)
    body["nodes"] = _node(body["nodes"], "welcome", template_id=templates["sms"])
    error = assert_error(client.post("/api/v1/journeys", headers=bearer(marketer), json=body), 422,
                         "validation_error")
    assert error["fields"] == [{"field": "nodes.1.template_id",
                                "reason": f"node 'welcome': template {templates['sms']} is for sms, not email"}]


async def test_a_segment_entry_needs_a_dynamic_segment(client, marketer, templates, pg):
    static = await pg.fetchval("INSERT INTO segments (name, criteria) VALUES ($1, '{}'::jsonb) RETURNING segment_id",
                               unique_name("segment"))
    body = journey_body(templates)
    body["nodes"][0] = {"id": "start", "type": "entry", "segment_id": static, "next": "welcome"}
    error = assert_error(client.post("/api/v1/journeys", headers=bearer(marketer), json=body), 422,
                         "validation_error")
    assert [p["field"] for p in error["fields"]] == ["nodes.0.segment_id"]
    assert "'start'" in error["fields"][0]["reason"] and "static" in error["fields"][0]["reason"]


@pytest.mark.parametrize("overrides, field", [
    ({"surprise": 1}, "surprise"),
    ({"name": 42}, "name"),
    ({"description": 7}, "description"),
    ({"nodes": "start"}, "nodes"),
    ({"goal": {"event": "Purchase!"}}, "goal.event"),
])
def test_unknown_fields_and_wrong_types_are_422(client, marketer, templates, overrides, field):
    error = assert_error(client.post("/api/v1/journeys", headers=bearer(marketer),
                                     json=journey_body(templates, **overrides)), 422, "validation_error")
    assert field in [p["field"] for p in error["fields"]], error


def test_a_body_that_is_no_object_or_no_json_is_refused(client, marketer):
    error = assert_error(client.post("/api/v1/journeys", headers=bearer(marketer), json=[1, 2]), 422,
                         "validation_error")
    assert error["fields"][0]["field"] == "definition"
    assert_error(client.post("/api/v1/journeys", headers=bearer(marketer), content=b"{nope"), 400, "malformed_json")


def test_unknown_journey_is_404(client, marketer):
    assert_error(client.get("/api/v1/journeys/987654321987", headers=bearer(marketer)), 404, "not_found")
    assert_error(client.get(f"/api/v1/journeys/{2**63}", headers=bearer(marketer)), 404, "not_found")
    assert_error(client.post("/api/v1/journeys/987654321987/publish", headers=bearer(marketer)), 404, "not_found")


def test_list_pages_newest_first_and_filters_by_status(client, marketer, templates):
    made = [create(client, marketer, journey_body(templates))["journey_id"] for _ in range(3)]
    publish(client, marketer, made[1])

    seen: list[int] = []
    url = "/api/v1/journeys?limit=2"
    while url and (not seen or min(seen) > made[0]):
        page = client.get(url, headers=bearer(marketer)).json()
        seen += [j["journey_id"] for j in page["journeys"]]
        url = f"/api/v1/journeys?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else None
    assert seen == sorted(set(seen), reverse=True)
    assert [j for j in seen if j in made] == made[::-1]

    live = client.get("/api/v1/journeys?status=live&limit=200", headers=bearer(marketer)).json()["journeys"]
    assert all(j["status"] == "live" for j in live) and made[1] in [j["journey_id"] for j in live]
    bad = assert_error(client.get("/api/v1/journeys?status=paused&cursor=zzz", headers=bearer(marketer)), 422,
                       "validation_error")
    assert {p["field"] for p in bad["fields"]} == {"status", "cursor"}


# ---------------------------------------------------------------- replace


async def test_put_replaces_the_draft_and_bumps_the_version(client, marketer, templates, pg):
    created = create(client, marketer, journey_body(templates))
    url = f"/api/v1/journeys/{created['journey_id']}"
    new = journey_body(templates, name=unique_name("renamed"), description=None)
    new["nodes"] = _node(new["nodes"], "welcome", variables={"code": "WELCOME20"})

    response = client.put(url, headers={**bearer(marketer), "If-Match": '"1"'}, json=new)

    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["version"] == 2 and response.headers["ETag"] == '"2"'
    assert replaced["definition"] == new and replaced["name"] == new["name"] and replaced["description"] is None
    assert await audit_actions(pg, "journey", created["journey_id"]) == ["journey.created", "journey.updated"]


def test_put_with_a_stale_if_match_is_412(client, marketer, templates):
    created = create(client, marketer, journey_body(templates))
    url = f"/api/v1/journeys/{created['journey_id']}"
    assert client.put(url, headers=bearer(marketer), json=journey_body(templates)).status_code == 200

    stale = client.put(url, headers={**bearer(marketer), "If-Match": '"1"'}, json=journey_body(templates))
    assert_error(stale, 412, "precondition_failed")
    assert client.get(url, headers=bearer(marketer)).json()["version"] == 2


def test_put_validates_the_new_draft(client, marketer, templates):
    created = create(client, marketer, journey_body(templates))
    body = journey_body(templates)
    body["nodes"] = _unreachable(body["nodes"])
    error = assert_error(client.put(f"/api/v1/journeys/{created['journey_id']}", headers=bearer(marketer), json=body),
                         422, "validation_error")
    assert "nodes.5" in [p["field"] for p in error["fields"]]


# ---------------------------------------------------------------- publish


async def step_rows(pg, journey_id: int) -> list[asyncpg.Record]:
    return await pg.fetch("SELECT * FROM campaigns WHERE journey_id = $1 ORDER BY campaign_id", journey_id)


async def test_publish_freezes_version_1_with_one_active_campaign_per_send_node(client, marketer, templates, pg,
                                                                                redis):
    body = journey_body(templates)
    created = create(client, marketer, body)
    journey_id = created["journey_id"]
    before = flows_changed_stamp(await redis.get(FLOWS_CHANGED))

    published = publish(client, marketer, journey_id)

    assert published["status"] == "live" and published["live_version"] == 1
    assert published["published_at"] is not None and published["version"] == 2
    steps = published["step_campaigns"]
    assert set(steps) == {"welcome", "nudge"}
    version = await pg.fetchrow("SELECT * FROM journey_versions WHERE journey_id = $1", journey_id)
    assert version["version"] == 1 and orjson.loads(version["definition"]) == body
    assert {k: int(v) for k, v in orjson.loads(version["step_campaigns"]).items()} == steps

    rows = {r["journey_node"]: r for r in await step_rows(pg, journey_id)}
    assert {node: r["campaign_id"] for node, r in rows.items()} == steps
    welcome, nudge = rows["welcome"], rows["nudge"]
    for node, row in rows.items():
        assert (row["type"], row["status"], row["journey_version"]) == ("journey", "active", 1)
        assert row["name"] == f"{body['name']} · v1 · {node}"
        assert orjson.loads(row["schedule"]) == {} and row["trigger"] is None and row["launch_id"] is None
        assert await redis.get(status_key(row["campaign_id"])) == b"active"
    assert list(welcome["channels"]) == ["email"] and list(nudge["channels"]) == ["sms"]
    assert orjson.loads(welcome["content"]) == {"email": {"template_id": templates["email"],
                                                          "variables": {"code": "HELLO10"}}}
    assert orjson.loads(nudge["content"]) == {"sms": {"template_id": templates["sms"], "variables": {}}}
    assert orjson.loads(welcome["ab_test_config"]) == {}
    assert orjson.loads(nudge["ab_test_config"]) == {"enabled": True, "variants": [{"id": "A", "weight": 50.0},
                                                                                   {"id": "B", "weight": 50.0}]}
    assert flows_changed_stamp(await redis.get(FLOWS_CHANGED)) > before
    assert await audit_actions(pg, "journey", journey_id) == ["journey.created", "journey.published"]
    assert await audit_actions(pg, "campaign", steps["welcome"]) == ["campaign.created"]

    versions = client.get(f"/api/v1/journeys/{journey_id}/versions", headers=bearer(marketer)).json()["versions"]
    assert [(v["version"], v["step_campaigns"]) for v in versions] == [(1, steps)]
    assert versions[0]["published_by"] and versions[0]["published_at"].endswith("Z")


async def test_publishing_again_makes_version_2_and_leaves_version_1_untouched(client, marketer, templates, pg):
    created = create(client, marketer, journey_body(templates))
    journey_id = created["journey_id"]
    first = publish(client, marketer, journey_id)
    v1_before = [dict(r) for r in await step_rows(pg, journey_id)]
    changed = journey_body(templates, name=created["name"])
    changed["nodes"] = _node(changed["nodes"], "welcome", variables={"code": "SECOND"})
    assert client.put(f"/api/v1/journeys/{journey_id}", headers=bearer(marketer), json=changed).status_code == 200

    second = publish(client, marketer, journey_id)

    assert second["live_version"] == 2 and second["status"] == "live"
    assert set(second["step_campaigns"].values()).isdisjoint(first["step_campaigns"].values())
    rows = await step_rows(pg, journey_id)
    assert [dict(r) for r in rows if r["journey_version"] == 1] == v1_before
    new = {r["journey_node"]: r for r in rows if r["journey_version"] == 2}
    assert orjson.loads(new["welcome"]["content"])["email"]["variables"] == {"code": "SECOND"}
    definitions = await pg.fetch("SELECT version, definition FROM journey_versions WHERE journey_id = $1"
                                 " ORDER BY version", journey_id)
    assert [orjson.loads(d["definition"])["nodes"][1]["variables"]["code"] for d in definitions] == ["HELLO10",
                                                                                                   "SECOND"]
    versions = client.get(f"/api/v1/journeys/{journey_id}/versions", headers=bearer(marketer)).json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["step_campaigns"] == first["step_campaigns"]


async def test_step_campaigns_are_read_and_listed_through_the_campaigns_api(client, marketer, templates, redis):
    created = create(client, marketer, journey_body(templates))
    steps = publish(client, marketer, created["journey_id"])["step_campaigns"]
    key = metrics_key(steps["welcome"])
    try:
        await redis.hset(key, mapping={"sent": 12, "opened": 4})
        got = client.get(f"/api/v1/campaigns/{steps['welcome']}", headers=bearer(marketer))
    finally:
        await redis.delete(key)

    assert got.status_code == 200, got.text
    campaign = got.json()
    assert (campaign["type"], campaign["status"], campaign["channels"]) == ("journey", "active", ["email"])
    assert (campaign["metrics"]["sent"], campaign["metrics"]["opened"]) == (12, 4)
    listed = client.get("/api/v1/campaigns?type=journey&limit=200", headers=bearer(marketer)).json()["campaigns"]
    assert all(c["type"] == "journey" for c in listed)
    assert set(steps.values()) <= {c["campaign_id"] for c in listed}


async def test_publish_validates_the_draft_again(client, marketer, templates, pg):
    created = create(client, marketer, journey_body(templates))
    await pg.execute("DELETE FROM templates WHERE template_id = $1", templates["sms"])

    error = assert_error(client.post(f"/api/v1/journeys/{created['journey_id']}/publish", headers=bearer(marketer)),
                         422, "validation_error")

    assert error["fields"] == [{"field": "nodes.3.template_id",
                                "reason": f"node 'nudge': no template {templates['sms']}"}]
    assert await step_rows(pg, created["journey_id"]) == []
    assert client.get(f"/api/v1/journeys/{created['journey_id']}", headers=bearer(marketer)).json()["status"] == "draft"


def test_publish_honours_if_match(client, marketer, templates):
    created = create(client, marketer, journey_body(templates))
    stale = client.post(f"/api/v1/journeys/{created['journey_id']}/publish",
                        headers={**bearer(marketer), "If-Match": '"7"'})
    assert_error(stale, 412, "precondition_failed")


# ---------------------------------------------------------------- stop and delete


async def test_stop_ends_entries_and_publishing_makes_it_live_again(client, marketer, templates, pg, redis):
    created = create(client, marketer, journey_body(templates))
    journey_id = created["journey_id"]
    url = f"/api/v1/journeys/{journey_id}"
    assert_error(client.post(f"{url}/stop", headers=bearer(marketer)), 409, "illegal_transition")  # a draft
    publish(client, marketer, journey_id)
    before = flows_changed_stamp(await redis.get(FLOWS_CHANGED))

    stopped = client.post(f"{url}/stop", headers=bearer(marketer))

    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "stopped" and stopped.json()["stopped_at"] is not None
    assert stopped.json()["live_version"] == 1
    assert flows_changed_stamp(await redis.get(FLOWS_CHANGED)) > before
    steps = await pg.fetch("SELECT campaign_id, status FROM campaigns WHERE journey_id = $1", journey_id)
    assert steps and {r["status"] for r in steps} == {"cancelled"}  # what was queued is not sent
    assert {await redis.get(status_key(r["campaign_id"])) for r in steps} == {b"cancelled"}
    assert_error(client.post(f"{url}/stop", headers=bearer(marketer)), 409, "illegal_transition")

    again = publish(client, marketer, journey_id)
    assert again["status"] == "live" and again["live_version"] == 2 and again["stopped_at"] is None
    assert await audit_actions(pg, "journey", journey_id) == [
        "journey.created", "journey.published", "journey.stopped", "journey.published"]


async def test_only_a_journey_never_published_can_be_deleted(client, marketer, templates, pg):
    draft = create(client, marketer, journey_body(templates))
    deleted = client.delete(f"/api/v1/journeys/{draft['journey_id']}", headers=bearer(marketer))
    assert deleted.status_code == 204
    assert_error(client.get(f"/api/v1/journeys/{draft['journey_id']}", headers=bearer(marketer)), 404, "not_found")
    assert await audit_actions(pg, "journey", draft["journey_id"]) == ["journey.created", "journey.deleted"]

    live = create(client, marketer, journey_body(templates))
    publish(client, marketer, live["journey_id"])
    error = assert_error(client.delete(f"/api/v1/journeys/{live['journey_id']}", headers=bearer(marketer)), 409,
                         "not_deletable")
    assert error["fields"] == [{"field": "status", "reason": "is live, must be draft"}]
    client.post(f"/api/v1/journeys/{live['journey_id']}/stop", headers=bearer(marketer))
    assert_error(client.delete(f"/api/v1/journeys/{live['journey_id']}", headers=bearer(marketer)), 409,
                 "not_deletable")


# ---------------------------------------------------------------- progress


async def test_progress_reads_the_workers_counters_and_each_versions_campaigns(client, marketer, templates, redis):
    created = create(client, marketer, journey_body(templates))
    journey_id = created["journey_id"]
    v1 = publish(client, marketer, journey_id)["step_campaigns"]
    v2 = publish(client, marketer, journey_id)["step_campaigns"]
    flow = flow_progress_key(f"j{journey_id}")
    keys = [flow] + [metrics_key(c) for c in (*v1.values(), *v2.values())]
    try:
        await redis.hset(flow, mapping={"entered": 120, "at:opened": 30, "at:nudge": 2, "at:gone_node": 1,
                                        "exited:goal": 40, "exited:exit": 45, "exited:stopped": 2, "timed_out": 25,
                                        "converted": 41})
        await redis.hset(metrics_key(v1["welcome"]), mapping={"sent": 80, "suppressed": 5, "opened": 50,
                                                              "clicked": 12, "delivered": 79})
        await redis.hset(metrics_key(v2["welcome"]), mapping={"sent": 30, "opened": 10, "suppressed:quiet_hours": 1,
                                                              "suppressed": 1})
        await redis.hset(metrics_key(v2["nudge"]), mapping={"sent": 20, "clicked": 3})
        response = client.get(f"/api/v1/journeys/{journey_id}/progress", headers=bearer(marketer))
    finally:
        await redis.delete(*keys)

    assert response.status_code == 200, response.text
    progress = response.json()
    assert Progress.model_validate(progress).model_dump(mode="json").keys() == progress.keys()
    assert (progress["status"], progress["live_version"]) == ("live", 2)
    counts = (progress["entered"], progress["inside"], progress["conversions"], progress["timed_out"])
    assert counts == (120, 33, 41, 25)
    assert progress["exited"] == {"goal": 40, "exit": 45, "stopped": 2}
    nodes = {n["id"]: n for n in progress["nodes"]}
    assert [n["id"] for n in progress["nodes"]] == ["start", "welcome", "opened", "nudge", "done"]
    assert nodes["welcome"] == {"id": "welcome", "type": "send", "users": 0, "sent": 110, "suppressed": 6,
                                "opened": 60, "clicked": 12}
    assert nodes["nudge"] == {"id": "nudge", "type": "send", "users": 2, "sent": 20, "suppressed": 0, "opened": 0,
                              "clicked": 3}
    assert nodes["opened"]["users"] == 30 and nodes["opened"]["sent"] == 0
    assert [v["version"] for v in progress["versions"]] == [2, 1]


def test_progress_of_a_draft_is_zero_over_its_draft_nodes(client, marketer, templates):
    created = create(client, marketer, journey_body(templates))
    progress = client.get(f"/api/v1/journeys/{created['journey_id']}/progress", headers=bearer(marketer)).json()
    assert progress["entered"] == progress["inside"] == 0 and progress["versions"] == []
    assert [n["id"] for n in progress["nodes"]] == ["start", "welcome", "opened", "nudge", "done"]


# ---------------------------------------------------------------- auth and docs


def test_journeys_need_a_key_and_authors_change_them(client, analyst, marketer, templates):
    assert_error(client.get("/api/v1/journeys"), 401, "unauthorized")
    assert_error(client.post("/api/v1/journeys", json={}), 401, "unauthorized")
    created = create(client, marketer, journey_body(templates))
    url = f"/api/v1/journeys/{created['journey_id']}"
    assert client.get(url, headers=bearer(analyst)).status_code == 200
    assert client.get(f"{url}/progress", headers=bearer(analyst)).status_code == 200
    assert_error(client.post("/api/v1/journeys", headers=bearer(analyst), json=journey_body(templates)), 403,
                 "forbidden")
    assert_error(client.put(url, headers=bearer(analyst), json=journey_body(templates)), 403, "forbidden")
    assert_error(client.post(f"{url}/publish", headers=bearer(analyst)), 403, "forbidden")
    assert_error(client.post(f"{url}/stop", headers=bearer(analyst)), 403, "forbidden")
    assert_error(client.delete(url, headers=bearer(analyst)), 403, "forbidden")


def test_the_openapi_document_describes_the_journey_routes(client):
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert set(paths["/api/v1/journeys"]) == {"get", "post"}
    assert set(paths["/api/v1/journeys/{journey_id}"]) == {"get", "put", "delete"}
    for action in ("publish", "stop"):
        assert paths[f"/api/v1/journeys/{{journey_id}}/{action}"]["post"]["x-roles"] == ["admin", "marketer"]
    assert "422" in paths["/api/v1/journeys"]["post"]["responses"]
    assert "get" in paths["/api/v1/journeys/{journey_id}/progress"]

"""Segments over the real API: the audience store follows the real ``user-profiles``
topic, PostgreSQL holds segments and their members.

Test users get ids above 10**12 and an attribute ``segtest_run`` unique to the
run, so counts never depend on what else the shared stack holds. They are
written to Kafka (what the audience store follows) and to PostgreSQL's
``users`` with the ingest's own upsert (what ``segment_members`` references),
since no worker runs here.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

import asyncpg
import orjson
import pytest
from starlette.testclient import TestClient

from pipeline.launch_audience import exclusion_cycle
from config import Settings
from pipeline.pii_keys import pii_keyring
from pipeline.stores.postgres import upsert_users
from schemas.records import UserProfile
from tests.helpers.api import assert_error, bearer, unique_name
from tests.helpers.kafka import eventually, produce

TIERS = {"core": 20, "near": 20, "other": 10}
POPULATION = sum(TIERS.values())


def _run_token() -> str:
    return f"run{secrets.token_hex(5)}"


def _id_base() -> int:
    return 10**12 + secrets.randbelow(10**14) * 1000


def profiles(token: str, tiers: dict[str, int], first_id: int) -> list[UserProfile]:
    """Users sharing ``segtest_run = token``; the core tier buys more and is German, like a real seed."""
    made, user_id = [], first_id
    for tier, count in tiers.items():
        for i in range(count):
            made.append(
                UserProfile(
                    user_id=user_id,
                    email=f"u{user_id}@example.com",
                    country="DE" if tier in ("core", "near") else "US",
                    attributes={
                        "segtest_run": token,
                        "segtest_tier": tier,
                        "segtest_score": float(100 + i if tier in ("core", "near") else i),
                    },
                    created_at=datetime.now(timezone.utc),
                )
            )
            user_id += 1
    return made


async def publish(settings: Settings, pool: asyncpg.Pool, users: list[UserProfile]) -> None:
    """As upstream plus ingestion would: into PostgreSQL's users, and onto the profiles topic."""
    await upsert_users(pool, pii_keyring(settings), users)
    records = [(str(u.user_id).encode(), orjson.dumps(u.model_dump(mode="json"))) for u in users]
    await produce(settings.kafka_brokers, "user-profiles", records)


def condition(field: str, operator: str, value: object) -> dict:
    return {"field": field, "operator": operator, "value": value}


@pytest.fixture(scope="module")
async def pool(api_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(api_settings.postgres_dsn, min_size=1, max_size=3)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def keys(admin_key: str, issue_key: Callable[[str], dict]) -> dict[str, str]:
    return {"admin": admin_key, "marketer": issue_key("marketer")["key"], "analyst": issue_key("analyst")["key"]}


@pytest.fixture(scope="module")
async def population(client: TestClient, keys: dict, api_settings: Settings, pool: asyncpg.Pool) -> dict:
    """50 users of this run, known to the audience store before any test uses them."""
    token = _run_token()
    users = profiles(token, TIERS, _id_base())
    await publish(api_settings, pool, users)

    async def all_seen() -> bool:
        response = client.post(
            "/api/v1/segments/estimate",
            headers=bearer(keys["analyst"]),
            json={"criteria": {"conditions": [condition("segtest_run", "equals", token)]}},
        )
        return response.status_code == 200 and response.json()["estimated_size"] == POPULATION

    await eventually(all_seen, timeout_s=30)
    by_tier: dict[str, list[int]] = {}
    for user in users:
        by_tier.setdefault(user.attributes["segtest_tier"], []).append(user.user_id)
    return {"token": token, "ids": by_tier}


def of_run(population: dict, *more: dict, logic: str = "AND", exclude: list[int] | None = None) -> dict:
    criteria: dict = {"conditions": [condition("segtest_run", "equals", population["token"]), *more], "logic": logic}
    if exclude is not None:
        criteria["exclude_segments"] = exclude
    return criteria


def tier(*names: str) -> dict:
    return condition("segtest_tier", "in", list(names))


def create(client: TestClient, key: str, criteria: dict, dynamic: bool, name: str | None = None) -> dict:
    body = {"name": name or unique_name("segment"), "description": "a test segment", "criteria": criteria,
            "dynamic": dynamic}
    response = client.post("/api/v1/segments", headers=bearer(key), json=body)
    assert response.status_code == 201, response.text
    return response.json()


def estimate(client: TestClient, key: str, criteria: dict) -> int:
    response = client.post("/api/v1/segments/estimate", headers=bearer(key), json={"criteria": criteria})
    assert response.status_code == 200, response.text
    return response.json()["estimated_size"]


async def members(pool: asyncpg.Pool, segment_id: int) -> set[int]:
    rows = await pool.fetch("SELECT user_id FROM segment_members WHERE segment_id = $1", segment_id)
    return {r["user_id"] for r in rows}


# ---------------------------------------------------------------- estimates


async def test_estimate_counts_new_profiles_within_five_seconds(
    client: TestClient, keys: dict, api_settings: Settings, pool: asyncpg.Pool, population: dict
) -> None:
    # `population` first: the store has caught up with the topics, so only freshness is measured.
    token = _run_token()
    await publish(api_settings, pool, profiles(token, {"core": 4, "other": 3}, _id_base()))
    criteria = {"conditions": [condition("segtest_run", "equals", token)]}

    async def counted() -> dict | None:
        response = client.post("/api/v1/segments/estimate", headers=bearer(keys["analyst"]), json={"criteria": criteria})
        body = response.json()
        return body if response.status_code == 200 and body["estimated_size"] == 7 else None

    body = await eventually(counted, timeout_s=5.0, every_s=0.1)
    assert set(body) == {"estimated_size", "computation_time_ms", "warnings"}
    assert body["warnings"] == []
    assert body["computation_time_ms"] >= 0


def test_estimate_applies_conditions_and_nested_groups(client: TestClient, keys: dict, population: dict) -> None:
    key = keys["analyst"]
    assert estimate(client, key, of_run(population, tier("core"))) == 20
    assert estimate(client, key, of_run(population, condition("segtest_score", "greater_than", 109))) == 20
    nested = {"conditions": [tier("other"), condition("segtest_score", "greater_than", 109)], "logic": "OR"}
    assert estimate(client, key, of_run(population, nested, condition("country", "equals", "DE"))) == 20


def test_attribute_no_user_has_yet_is_accepted_with_a_warning_and_size_0(
    client: TestClient, keys: dict, population: dict
) -> None:
    name = f"segtest_not_yet_{population['token']}"
    criteria = of_run(population, condition(name, "greater_than", 1))
    expected = [{"field": "criteria.conditions.1.field", "reason": f"no user has attribute '{name}' yet"}]
    response = client.post("/api/v1/segments/estimate", headers=bearer(keys["analyst"]), json={"criteria": criteria})
    assert response.status_code == 200, response.text
    assert response.json()["estimated_size"] == 0 and response.json()["warnings"] == expected
    for dynamic in (True, False):
        created = create(client, keys["marketer"], criteria, dynamic=dynamic)
        assert created["estimated_size"] == created["size"] == 0
        assert created["warnings"] == expected
        assert created["criteria"]["conditions"][1]["field"] == name


def test_event_no_user_has_had_yet_is_accepted_with_a_warning(client: TestClient, keys: dict, population: dict) -> None:
    event = f"segtest_not_yet_{population['token']}"
    criteria = of_run(population, condition(f"events.{event}", "not_exists", "last_7_days"))
    response = client.post("/api/v1/segments/estimate", headers=bearer(keys["analyst"]), json={"criteria": criteria})
    assert response.status_code == 200, response.text
    assert response.json()["estimated_size"] == POPULATION  # nobody has had it, so everybody lacks it
    assert response.json()["warnings"] == [
        {"field": "criteria.conditions.1.field", "reason": f"no user has had event '{event}' yet"}]


def test_malformed_value_on_an_attribute_no_user_has_yet_is_still_422(
    client: TestClient, keys: dict, population: dict
) -> None:
    criteria = of_run(population, condition("segtest_not_yet", "greater_than", {"amount": 1}))
    for path, body in (("/api/v1/segments", {"name": unique_name("bad"), "criteria": criteria}),
                       ("/api/v1/segments/estimate", {"criteria": criteria})):
        error = assert_error(client.post(path, headers=bearer(keys["admin"]), json=body), 422, "validation_error")
        assert [f["field"] for f in error["fields"]] == ["criteria.conditions.1.value"]


def test_unknown_operator_is_422_naming_it(client: TestClient, keys: dict, population: dict) -> None:
    criteria = of_run(population, condition("segtest_tier", "resembles", "core"))
    for path, body in (("/api/v1/segments", {"name": unique_name("bad"), "criteria": criteria}),
                       ("/api/v1/segments/estimate", {"criteria": criteria})):
        error = assert_error(client.post(path, headers=bearer(keys["admin"]), json=body), 422, "validation_error")
        assert [f["field"] for f in error["fields"]] == ["criteria.conditions.1.operator"]
        assert "resembles" in error["fields"][0]["reason"]


def test_unknown_body_field_is_422_naming_it(client: TestClient, keys: dict, population: dict) -> None:
    body = {"name": unique_name("bad"), "criteria": of_run(population), "colour": "red"}
    error = assert_error(client.post("/api/v1/segments", headers=bearer(keys["admin"]), json=body), 422,
                         "validation_error")
    assert [f["field"] for f in error["fields"]] == ["colour"]


# ---------------------------------------------------------------- create, get, list, delete


def test_dynamic_segment_answers_in_the_spec_shape_and_counts_live(
    client: TestClient, keys: dict, population: dict, pool: asyncpg.Pool
) -> None:
    criteria = of_run(population, tier("core", "near"))
    created = create(client, keys["marketer"], criteria, dynamic=True)

    assert {"segment_id", "name", "estimated_size", "created_at", "dynamic", "criteria"} <= set(created)
    assert created["estimated_size"] == 40
    assert created["dynamic"] is True and created["kind"] == "dynamic"
    assert created["criteria"]["conditions"][1]["field"] == "segtest_tier"

    got = client.get(f"/api/v1/segments/{created['segment_id']}", headers=bearer(keys["analyst"]))
    assert got.status_code == 200, got.text
    body = got.json()
    assert {"segment_id", "name", "size", "last_updated", "criteria"} <= set(body)
    assert body["size"] == 40
    assert body["criteria"] == created["criteria"]
    assert body["last_updated"] is not None


async def test_dynamic_segment_size_follows_new_profiles(
    client: TestClient, keys: dict, population: dict, api_settings: Settings, pool: asyncpg.Pool
) -> None:
    criteria = of_run(population, tier("late"))
    segment_id = create(client, keys["marketer"], criteria, dynamic=True)["segment_id"]
    assert client.get(f"/api/v1/segments/{segment_id}", headers=bearer(keys["analyst"])).json()["size"] == 0

    late = profiles(population["token"], {"late": 2}, _id_base())
    await publish(api_settings, pool, late)

    async def grown() -> bool:
        return client.get(f"/api/v1/segments/{segment_id}", headers=bearer(keys["analyst"])).json()["size"] == 2

    await eventually(grown, timeout_s=5.0, every_s=0.1)


async def test_static_segment_snapshots_its_members(client: TestClient, keys: dict, population: dict,
                                                    pool: asyncpg.Pool) -> None:
    created = create(client, keys["admin"], of_run(population, tier("core", "near")), dynamic=False)

    assert created["kind"] == "static" and created["dynamic"] is False
    assert created["estimated_size"] == 40
    expected = set(population["ids"]["core"]) | set(population["ids"]["near"])
    assert await members(pool, created["segment_id"]) == expected
    got = client.get(f"/api/v1/segments/{created['segment_id']}", headers=bearer(keys["analyst"])).json()
    assert got["size"] == 40


async def test_creation_and_deletion_are_audited(client: TestClient, keys: dict, population: dict,
                                                 pool: asyncpg.Pool) -> None:
    segment_id = create(client, keys["marketer"], of_run(population, tier("other")), dynamic=False)["segment_id"]
    deleted = client.delete(f"/api/v1/segments/{segment_id}", headers=bearer(keys["marketer"]))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["segment_id"] == segment_id

    assert_error(client.get(f"/api/v1/segments/{segment_id}", headers=bearer(keys["analyst"])), 404, "not_found")
    assert await members(pool, segment_id) == set()
    rows = await pool.fetch(
        "SELECT action, before, after FROM audit_log WHERE entity_type = 'segment' AND entity_id = $1"
        " ORDER BY audit_id",
        str(segment_id),
    )
    assert [r["action"] for r in rows] == ["segment.created", "segment.deleted"]
    assert orjson.loads(rows[0]["after"])["size"] == 10
    assert rows[1]["after"] is None and orjson.loads(rows[1]["before"])["segment_id"] == segment_id


def test_listing_pages_newest_first_with_a_cursor(client: TestClient, keys: dict, population: dict) -> None:
    made = [create(client, keys["marketer"], of_run(population), dynamic=True)["segment_id"] for _ in range(3)]

    seen: list[int] = []
    cursor = None
    while len(seen) < 3:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        response = client.get("/api/v1/segments", headers=bearer(keys["analyst"]), params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["segments"]) <= 2
        seen += [s["segment_id"] for s in page["segments"] if s["segment_id"] <= made[-1]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:3] == sorted(made, reverse=True)


def test_listing_refuses_a_bad_cursor_or_limit(client: TestClient, keys: dict) -> None:
    headers = bearer(keys["analyst"])
    error = assert_error(client.get("/api/v1/segments?cursor=nonsense!", headers=headers), 422, "validation_error")
    assert error["fields"][0]["field"] == "cursor"
    error = assert_error(client.get("/api/v1/segments?limit=0", headers=headers), 422, "validation_error")
    assert error["fields"][0]["field"] == "limit"


def test_missing_segment_is_404(client: TestClient, keys: dict) -> None:
    for method, path in (("GET", "/api/v1/segments/999999999999"), ("DELETE", "/api/v1/segments/999999999999"),
                         ("POST", "/api/v1/segments/99999999999999999999/lookalike")):
        response = client.request(method, path, headers=bearer(keys["admin"]), json={"size": 5})
        assert_error(response, 404, "not_found")


async def test_segment_of_a_live_campaign_cannot_be_deleted(client: TestClient, keys: dict, population: dict,
                                                            pool: asyncpg.Pool) -> None:
    segment_id = create(client, keys["marketer"], of_run(population, tier("other")), dynamic=True)["segment_id"]
    campaign_id = await pool.fetchval(
        "INSERT INTO campaigns (name, status, segment_id) VALUES ($1, 'active', $2) RETURNING campaign_id",
        unique_name("campaign"), segment_id,
    )
    try:
        error = assert_error(client.delete(f"/api/v1/segments/{segment_id}", headers=bearer(keys["admin"])), 409,
                             "conflict")
        assert str(campaign_id) in error["message"]
        await pool.execute("UPDATE campaigns SET status = 'completed' WHERE campaign_id = $1", campaign_id)
        assert client.delete(f"/api/v1/segments/{segment_id}", headers=bearer(keys["admin"])).status_code == 200
    finally:
        await pool.execute("DELETE FROM campaigns WHERE campaign_id = $1", campaign_id)


# ---------------------------------------------------------------- exclusions


def test_excluded_segments_are_subtracted(client: TestClient, keys: dict, population: dict) -> None:
    key = keys["marketer"]
    static_core = create(client, key, of_run(population, tier("core")), dynamic=False)["segment_id"]
    dynamic_near = create(client, key, of_run(population, tier("near")), dynamic=True)["segment_id"]

    everyone = tier(*TIERS)  # not the "late" users another test adds
    assert estimate(client, key, of_run(population, everyone, exclude=[static_core])) == POPULATION - 20
    assert estimate(client, key, of_run(population, everyone, exclude=[static_core, dynamic_near])) == 10

    chained = create(client, key, of_run(population, everyone, exclude=[dynamic_near]), dynamic=True)["segment_id"]
    # Transitively: everyone, minus (everyone minus near) = near
    assert create(client, key, of_run(population, everyone, exclude=[chained]), dynamic=False)["estimated_size"] == 20

    error = assert_error(client.delete(f"/api/v1/segments/{dynamic_near}", headers=bearer(key)), 409, "conflict")
    assert str(chained) in error["message"]


def test_excluding_a_missing_segment_is_422(client: TestClient, keys: dict, population: dict) -> None:
    response = client.post("/api/v1/segments/estimate", headers=bearer(keys["analyst"]),
                           json={"criteria": of_run(population, exclude=[999999999999])})
    error = assert_error(response, 422, "validation_error")
    assert error["fields"][0]["field"] == "criteria.exclude_segments"
    assert "999999999999" in error["fields"][0]["reason"]


async def test_exclusions_that_form_a_cycle_are_refused(client: TestClient, keys: dict, population: dict,
                                                        pool: asyncpg.Pool) -> None:
    # The API cannot create a cycle (a segment can only exclude ones that exist already);
    # two stored rows that name each other stand for one made by hand or by an old version.
    async with pool.acquire() as conn, conn.transaction():
        first = await conn.fetchval(
            "INSERT INTO segments (name, criteria, dynamic, kind) VALUES ($1, '{}', true, 'dynamic')"
            " RETURNING segment_id", unique_name("cycle"))
        second = await conn.fetchval(
            "INSERT INTO segments (name, criteria, dynamic, kind) VALUES ($1, $2::jsonb, true, 'dynamic')"
            " RETURNING segment_id", unique_name("cycle"), orjson.dumps(of_run(population, exclude=[first])).decode())
        await conn.execute("UPDATE segments SET criteria = $2::jsonb WHERE segment_id = $1", first,
                           orjson.dumps(of_run(population, exclude=[second])).decode())
    try:
        response = client.post("/api/v1/segments", headers=bearer(keys["marketer"]),
                               json={"name": unique_name("cyclic"), "criteria": of_run(population, exclude=[first])})
        error = assert_error(response, 422, "validation_error")
        assert error["fields"][0]["field"] == "criteria.exclude_segments"
        assert "cycle" in error["fields"][0]["reason"]
        assert_error(client.get(f"/api/v1/segments/{first}", headers=bearer(keys["analyst"])), 422,
                     "validation_error")
    finally:
        await pool.execute("DELETE FROM segments WHERE segment_id = ANY($1::bigint[])", [first, second])


# ---------------------------------------------------------------- lookalikes


async def test_lookalike_ranks_non_members_and_reports_quality(client: TestClient, keys: dict, population: dict,
                                                               pool: asyncpg.Pool) -> None:
    seed = create(client, keys["marketer"], of_run(population, tier("core")), dynamic=False)

    response = client.post(f"/api/v1/segments/{seed['segment_id']}/lookalike", headers=bearer(keys["marketer"]),
                           json={"size": 10})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "lookalike" and body["dynamic"] is False
    assert body["source_segment_id"] == seed["segment_id"]
    assert body["size"] == 10
    chosen = await members(pool, body["segment_id"])
    assert len(chosen) == 10
    assert not chosen & set(population["ids"]["core"])
    quality = body["quality"]
    assert quality["held_out_seed_members"] >= 2
    assert 0 <= quality["recall_at_size"] <= 1 and 0 <= quality["auc"] <= 1
    assert {"lift", "random_recall_at_size", "training_positives", "training_negatives"} <= set(quality)
    got = client.get(f"/api/v1/segments/{body['segment_id']}", headers=bearer(keys["analyst"])).json()
    assert got["quality"] == quality and got["size"] == 10


def test_lookalike_of_a_dynamic_seed_excludes_its_members(client: TestClient, keys: dict, population: dict) -> None:
    seed = create(client, keys["admin"], of_run(population, tier("near")), dynamic=True)
    response = client.post(f"/api/v1/segments/{seed['segment_id']}/lookalike", headers=bearer(keys["admin"]),
                           json={"size": 5, "name": unique_name("lookalike")})
    assert response.status_code == 201, response.text
    assert response.json()["size"] == 5


def test_lookalike_refuses_a_tiny_seed_or_a_bad_size(client: TestClient, keys: dict, population: dict) -> None:
    tiny = create(client, keys["marketer"], of_run(population, tier("other"),
                                                   condition("segtest_score", "less_than", 3)), dynamic=False)
    assert tiny["estimated_size"] == 3
    path = f"/api/v1/segments/{tiny['segment_id']}/lookalike"
    error = assert_error(client.post(path, headers=bearer(keys["marketer"]), json={"size": 5}), 422,
                         "validation_error")
    assert "at least 10" in error["message"]
    error = assert_error(client.post(path, headers=bearer(keys["marketer"]), json={"size": 0}), 422,
                         "validation_error")
    assert error["fields"][0]["field"] == "size"


# ---------------------------------------------------------------- who may


def test_every_endpoint_needs_a_key(client: TestClient) -> None:
    for method, path in (("POST", "/api/v1/segments"), ("GET", "/api/v1/segments"), ("GET", "/api/v1/segments/1"),
                         ("DELETE", "/api/v1/segments/1"), ("POST", "/api/v1/segments/estimate"),
                         ("POST", "/api/v1/segments/1/lookalike")):
        assert_error(client.request(method, path, json={}), 401, "unauthorized")


def test_analysts_read_and_estimate_but_do_not_change_segments(client: TestClient, keys: dict,
                                                               population: dict) -> None:
    segment_id = create(client, keys["marketer"], of_run(population), dynamic=True)["segment_id"]
    analyst = bearer(keys["analyst"])
    body = {"name": unique_name("segment"), "criteria": of_run(population)}

    assert_error(client.post("/api/v1/segments", headers=analyst, json=body), 403, "forbidden")
    assert_error(client.delete(f"/api/v1/segments/{segment_id}", headers=analyst), 403, "forbidden")
    assert_error(client.post(f"/api/v1/segments/{segment_id}/lookalike", headers=analyst, json={"size": 1}), 403,
                 "forbidden")
    assert client.get("/api/v1/segments", headers=analyst).status_code == 200
    assert client.get(f"/api/v1/segments/{segment_id}", headers=analyst).status_code == 200
    assert client.post("/api/v1/segments/estimate", headers=analyst, json={"criteria": of_run(population)}).status_code == 200


# ---------------------------------------------------------------- cycle detection (pure)


def test_exclusion_cycle_finds_a_loop_and_names_it() -> None:
    assert exclusion_cycle([1], {1: [2], 2: [3], 3: [1]}) == [1, 2, 3, 1]
    assert exclusion_cycle([5], {5: [6], 6: [7], 7: [6]}) == [6, 7, 6]


def test_exclusion_cycle_counts_a_way_back_to_the_segment_itself() -> None:
    assert exclusion_cycle([2], {2: [9]}, root=9) == [9, 2, 9]
    assert exclusion_cycle([2], {2: [3]}, root=9) is None


def test_shared_exclusions_are_not_a_cycle() -> None:
    # 1 and 2 both exclude 3 (a diamond): 3 is reached twice, never from itself.
    assert exclusion_cycle([1, 2], {1: [3], 2: [3], 3: []}) is None

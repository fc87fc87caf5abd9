"""Preferences and unsubscribes against the real API, PostgreSQL and Kafka."""

from __future__ import annotations

import base64
import random
import secrets
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from pipeline.pii import decrypt, email_index
from pipeline.pii_keys import pii_keyring
from pipeline.signing import signing_key
from pipeline.unsubscribe import make_unsubscribe_token
from schemas.preferences import CATEGORIES, PreferenceUpdate, preference_key
from schemas.messages import message_id
from schemas.topics import DELIVERY_EVENTS, PREFERENCE_UPDATES
from tests.helpers.api import assert_error, bearer
from tests.helpers.kafka import end_offsets, read, records_between

async def fetch(settings, query: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def published_after(settings, offsets: dict[TopicPartition, int], user_id: int, count: int = 1,
                          timeout_s: float = 20.0) -> list[tuple[int, bytes, dict]]:
    """(partition, key, value) of the first ``count`` records for ``user_id`` after ``offsets``."""
    key = preference_key(user_id)
    records = await read(settings.kafka_brokers, offsets, keep=lambda r: r.key == key,
                         until=lambda kept: len(kept) >= count, timeout_s=timeout_s)
    return [(r.partition, r.key, r.value) for r in records]


async def topic_end(settings) -> dict[TopicPartition, int]:
    return await end_offsets(settings.kafka_brokers, PREFERENCE_UPDATES.name)


def token_for(settings, user_id: int, channel: str = "email", campaign_id: int | None = 789) -> str:
    return make_unsubscribe_token(signing_key(settings), user_id, channel, campaign_id)


def tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[8] ^= 1  # the last byte of user_id: someone else's account
    return base64.urlsafe_b64encode(bytes(raw)).decode()


# ---- GET / PATCH ----------------------------------------------------------------------------------


async def test_user_without_a_row_gets_the_documented_defaults(client, admin_key, make_user):
    user_id = await make_user()
    response = client.get(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == user_id
    assert body["email_enabled"] and body["sms_enabled"] and body["push_enabled"] and body["in_app_enabled"]
    assert body["frequency_cap"] == {} and body["frequency_cap_window_days"] == 7
    assert body["categories"] == dict.fromkeys(CATEGORIES, True)
    assert body["consent"]["email"] == {"granted": True, "at": None, "source": "default", "text_version": None}
    assert body["updated_at"] is None and body["version"] == 0


async def test_unknown_user_is_404_on_get_and_patch(client, admin_key):
    unknown = 9_000_000_000_000_000_000 + random.randrange(10**6)
    assert_error(client.get(f"/api/v1/users/{unknown}/preferences", headers=bearer(admin_key)), 404, "not_found")
    assert_error(
        client.patch(f"/api/v1/users/{unknown}/preferences", headers=bearer(admin_key), json={"sms_enabled": False}),
        404, "not_found",
    )
    assert_error(client.get(f"/api/v1/users/{2**64}/preferences", headers=bearer(admin_key)), 404, "not_found")


async def test_patch_persists_records_the_unsubscribe_and_audits(client, api_settings, issue_key, make_user):
    marketer = issue_key("marketer")
    user_id = await make_user()
    response = client.patch(
        f"/api/v1/users/{user_id}/preferences",
        headers=bearer(marketer["key"]),
        json={"email_enabled": False, "unsubscribe_reason": "Too many emails", "frequency_cap": {"push": 5}},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["email_enabled"] is False and body["frequency_cap"] == {"push": 5} and body["version"] == 1
    assert body["consent"]["email"]["granted"] is False and body["consent"]["email"]["source"] == "api"
    assert client.get(f"/api/v1/users/{user_id}/preferences", headers=bearer(marketer["key"])).json() == body

    (unsub,) = await fetch(api_settings, "SELECT * FROM unsubscribes WHERE user_id = $1", user_id)
    assert unsub["channel"] == "email" and unsub["reason"] == "Too many emails"
    keyring = pii_keyring(api_settings)  # the address is kept encrypted, found by its blind index
    assert unsub["email"] is None and unsub["source"] == "api"
    assert decrypt(keyring, "email", unsub["email_enc"]) == f"pref-{user_id}@example.com"
    assert unsub["email_idx"] == email_index(keyring, f"PREF-{user_id}@example.com ")
    (audit,) = await fetch(
        api_settings,
        "SELECT * FROM audit_log WHERE entity_type = 'user_preferences' AND entity_id = $1", str(user_id),
    )
    assert audit["action"] == "preferences.updated" and audit["actor_key_id"] == marketer["key_id"]
    assert orjson.loads(audit["before"])["email_enabled"] is True
    assert orjson.loads(audit["after"])["email_enabled"] is False


async def test_patches_merge_and_a_no_op_keeps_the_version(client, admin_key, api_settings, make_user):
    user_id = await make_user()
    url = f"/api/v1/users/{user_id}/preferences"
    client.patch(url, headers=bearer(admin_key), json={"frequency_cap": {"email": 3}})
    second = client.patch(url, headers=bearer(admin_key), json={"categories": {"newsletters": False}}).json()
    again = client.patch(url, headers=bearer(admin_key), json={"categories": {"newsletters": False}})

    assert second["frequency_cap"] == {"email": 3} and second["categories"]["newsletters"] is False
    assert second["version"] == 2
    assert again.status_code == 200 and again.json() == second
    rows = await fetch(api_settings, "SELECT 1 FROM audit_log WHERE entity_type = 'user_preferences'"
                       " AND entity_id = $1", str(user_id))
    assert len(rows) == 2
    assert await fetch(api_settings, "SELECT 1 FROM unsubscribes WHERE user_id = $1", user_id) == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"frequency_cap": {"webhook": 3}}, "frequency_cap.webhook.[key]"),
        ({"frequency_cap": {"email": -1}}, "frequency_cap.email"),
        ({"categories": {"gossip": False}}, "categories.gossip.[key]"),
        ({"email_enabled": False, "colour": "blue"}, "colour"),
        ({"unsubscribe_reason": "bored"}, "unsubscribe_reason"),
        ({"sms_enabled": None}, "sms_enabled"),
    ],
)
async def test_invalid_patch_is_422_naming_the_field_and_changes_nothing(client, admin_key, make_user, body, field):
    user_id = await make_user()
    url = f"/api/v1/users/{user_id}/preferences"
    error = assert_error(client.patch(url, headers=bearer(admin_key), json=body), 422, "validation_error")

    assert field in [f["field"] for f in error["fields"]]
    assert client.get(url, headers=bearer(admin_key)).json()["version"] == 0


async def test_analyst_reads_but_cannot_change_and_no_key_is_401(client, issue_key, make_user):
    analyst = issue_key("analyst")
    user_id = await make_user()
    url = f"/api/v1/users/{user_id}/preferences"

    assert client.get(url, headers=bearer(analyst["key"])).status_code == 200
    assert_error(client.patch(url, headers=bearer(analyst["key"]), json={"sms_enabled": False}), 403, "forbidden")
    assert_error(client.patch(url, json={"sms_enabled": False}), 401, "unauthorized")
    assert_error(client.get(url), 401, "unauthorized")
    assert client.get(url, headers=bearer(analyst["key"])).json()["sms_enabled"] is True


async def test_patch_publishes_the_whole_state_keyed_like_user_profiles(client, admin_key, api_settings, make_user):
    user_id = await make_user()
    offsets = await topic_end(api_settings)
    body = client.patch(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key),
                        json={"push_enabled": False, "frequency_cap": {"email": 3}}).json()

    ((partition, key, value),) = await published_after(api_settings, offsets, user_id)
    assert key == str(user_id).encode()
    assert partition == (murmur2(key) & 0x7FFFFFFF) % len(offsets)  # where user-profiles puts this user
    update = PreferenceUpdate.model_validate(value)
    assert update.user_id == user_id and update.version == body["version"] == 1
    assert update.channels == {"email": True, "sms": True, "push": False, "in_app": True}
    assert update.unsubscribed == ["push"] and update.frequency_cap == {"email": 3}
    assert update.categories == dict.fromkeys(CATEGORIES, True)


async def test_concurrent_first_changes_all_survive_and_reach_kafka_in_order(
        client, admin_key, api_settings, make_user):
    user_id = await make_user()
    url = f"/api/v1/users/{user_id}/preferences"
    bodies = [{"frequency_cap": {c: n + 1}} for n, c in enumerate(("email", "sms", "push", "in_app"))] + [
        {"categories": {c: False}} for c in CATEGORIES]
    offsets = await topic_end(api_settings)
    with ThreadPoolExecutor(len(bodies)) as pool:  # the TestClient serves each thread's call concurrently
        responses = list(pool.map(lambda body: client.patch(url, headers=bearer(admin_key), json=body), bodies))

    assert [r.status_code for r in responses] == [200] * len(bodies)
    final = client.get(url, headers=bearer(admin_key)).json()
    assert final["frequency_cap"] == {"email": 1, "sms": 2, "push": 3, "in_app": 4}
    assert final["categories"] == dict.fromkeys(CATEGORIES, False)
    assert final["version"] == len(bodies)
    records = await published_after(api_settings, offsets, user_id, count=len(bodies))
    assert [value["version"] for _, _, value in records] == list(range(1, len(bodies) + 1))


# ---- POST /api/v1/unsubscribe ---------------------------------------------------------------------


async def test_valid_token_switches_the_channel_off_once_and_records_it(client, admin_key, api_settings, make_user):
    user_id = await make_user()
    token = token_for(api_settings, user_id, "sms", campaign_id=4242)
    offsets = await topic_end(api_settings)
    first = client.post("/api/v1/unsubscribe", json={"token": token, "campaign_id": 4242, "reason": "not for me"})
    second = client.post("/api/v1/unsubscribe", json={"token": token})

    assert first.status_code == 200, first.text
    assert first.json() == {"user_id": user_id, "channel": "sms", "campaign_id": 4242, "unsubscribed": True,
                            "changed": True}
    assert second.status_code == 200 and second.json()["changed"] is False
    prefs = client.get(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key)).json()
    assert prefs["sms_enabled"] is False and prefs["email_enabled"] is True
    assert prefs["consent"]["sms"]["source"] == "unsubscribe_api"

    (unsub,) = await fetch(api_settings, "SELECT * FROM unsubscribes WHERE user_id = $1", user_id)
    assert (unsub["channel"], unsub["campaign_id"], unsub["reason"], unsub["source"]) == (
        "sms", 4242, "not for me", "unsubscribe_api")
    (audit,) = await fetch(api_settings, "SELECT * FROM audit_log WHERE entity_type = 'user_preferences'"
                           " AND entity_id = $1", str(user_id))
    assert audit["actor"] == "unsubscribe-link" and audit["actor_key_id"] is None
    assert audit["action"] == "preferences.unsubscribed"

    records = await published_after(api_settings, offsets, user_id, count=2)
    assert [r[2]["unsubscribed"] for r in records] == [["sms"], ["sms"]]  # the repeat republishes the same state
    assert [r[2]["version"] for r in records] == [1, 1]


@pytest.mark.parametrize("mangle, status, code", [
    (tampered, 403, "invalid_token"),
    (lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"), 403, "invalid_token"),
    (lambda t: t[:40], 400, "malformed_token"),
    (lambda t: "not-a-token", 400, "malformed_token"),
])
async def test_forged_or_tampered_token_is_refused_and_changes_nothing(
        client, admin_key, api_settings, make_user, mangle, status, code):
    user_id = await make_user()
    neighbour = user_id ^ 1
    error = assert_error(client.post("/api/v1/unsubscribe", json={"token": mangle(token_for(api_settings, user_id))}),
                         status, code)

    assert error["fields"][0]["field"] == "token"
    for uid in (user_id, neighbour):
        assert await fetch(api_settings, "SELECT 1 FROM user_preferences WHERE user_id = $1", uid) == []
        assert await fetch(api_settings, "SELECT 1 FROM unsubscribes WHERE user_id = $1", uid) == []


async def test_token_signed_with_another_key_is_refused(client, api_settings, make_user):
    user_id = await make_user()
    foreign = make_unsubscribe_token(secrets.token_bytes(32), user_id, "email", 1)
    assert_error(client.post("/api/v1/unsubscribe", json={"token": foreign}), 403, "invalid_token")
    assert await fetch(api_settings, "SELECT 1 FROM user_preferences WHERE user_id = $1", user_id) == []


async def test_email_or_campaign_not_matching_the_token_is_403(client, admin_key, api_settings, make_user):
    user_id = await make_user()
    token = token_for(api_settings, user_id, "email", campaign_id=77)

    wrong_campaign = assert_error(client.post("/api/v1/unsubscribe", json={"token": token, "campaign_id": 78}),
                                  403, "token_mismatch")
    wrong_email = assert_error(
        client.post("/api/v1/unsubscribe", json={"token": token, "email": "someone@else.com"}), 403, "token_mismatch")
    assert wrong_campaign["fields"][0]["field"] == "campaign_id"
    assert wrong_email["fields"][0]["field"] == "email"
    assert await fetch(api_settings, "SELECT 1 FROM user_preferences WHERE user_id = $1", user_id) == []

    matching = client.post("/api/v1/unsubscribe",
                           json={"token": token, "campaign_id": 77, "email": f"PREF-{user_id}@Example.com"})
    assert matching.status_code == 200 and matching.json()["changed"] is True


async def test_unsubscribe_body_is_validated(client):
    assert_error(client.post("/api/v1/unsubscribe", json={}), 422, "validation_error")
    error = assert_error(client.post("/api/v1/unsubscribe", json={"token": "x", "user_id": 1}), 422,
                         "validation_error")
    assert error["fields"][0]["field"] == "user_id"


async def test_valid_token_of_a_deleted_user_is_404(client, api_settings, make_user):
    gone = await make_user()
    await fetch(api_settings, "DELETE FROM users WHERE user_id = $1", gone)
    assert_error(client.post("/api/v1/unsubscribe", json={"token": token_for(api_settings, gone)}), 404, "not_found")


# ---- RFC 8058 one-click -------------------------------------------------------------------------------


async def test_one_click_get_shows_a_page_and_changes_nothing(client, admin_key, api_settings, make_user):
    user_id = await make_user()
    token = token_for(api_settings, user_id, "push")
    pages = [client.get(f"/u/{token}") for _ in range(2)]

    for page in pages:
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
        assert 'method="post"' in page.text and "List-Unsubscribe" in page.text and "push notifications" in page.text
    prefs = client.get(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key)).json()
    assert prefs["push_enabled"] is True and prefs["version"] == 0
    assert await fetch(api_settings, "SELECT 1 FROM unsubscribes WHERE user_id = $1", user_id) == []


async def test_one_click_post_unsubscribes(client, admin_key, api_settings, make_user):
    user_id = await make_user()
    token = token_for(api_settings, user_id, "email", campaign_id=31337)
    offsets = await topic_end(api_settings)
    events_before = await end_offsets(api_settings.kafka_brokers, DELIVERY_EVENTS.name)
    response = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 200 and "unsubscribed" in response.text
    prefs = client.get(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key)).json()
    assert prefs["email_enabled"] is False
    (unsub,) = await fetch(api_settings, "SELECT * FROM unsubscribes WHERE user_id = $1", user_id)
    assert (unsub["channel"], unsub["campaign_id"], unsub["source"]) == ("email", 31337, "one_click")
    ((_, _, value),) = await published_after(api_settings, offsets, user_id)
    assert value["unsubscribed"] == ["email"]
    again = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert again.status_code == 200
    assert len(await fetch(api_settings, "SELECT 1 FROM unsubscribes WHERE user_id = $1", user_id)) == 1
    # The campaign's unsubscribed count: one event of its message, however often the link is used.
    events_after = await end_offsets(api_settings.kafka_brokers, DELIVERY_EVENTS.name)
    counted = [e for _, v in await records_between(api_settings.kafka_brokers, DELIVERY_EVENTS.name, events_before,
                                                   events_after)
               for e in v.get("events", []) if e["user_id"] == user_id]
    assert [(e["status"], e["campaign_id"], e["message_id"]) for e in counted] == \
        [("unsubscribed", 31337, str(message_id(31337, user_id, "email")))]



async def test_an_unsubscribe_counts_for_the_variant_and_step_of_the_message_it_came_from(client, api_settings,
                                                                                         make_user):
    import redis.asyncio as aioredis

    from pipeline.attribution import touches_of
    from schemas.keys import touch_key
    from schemas.messages import DeliveryEvent

    user_id = await make_user()
    journey_step = message_id(31338, user_id, "email", "welcome@1765000000")
    sent = DeliveryEvent(message_id=journey_step, campaign_id=31338, user_id=user_id, channel="email", variant="B",
                         step="welcome@1765000000", status="sent")
    redis = aioredis.from_url(api_settings.redis_url)
    await redis.hset(touch_key(user_id), mapping=touches_of([sent])[user_id])
    try:
        before = await end_offsets(api_settings.kafka_brokers, DELIVERY_EVENTS.name)
        response = client.post(f"/u/{token_for(api_settings, user_id, 'email', campaign_id=31338)}",
                               content=b"List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 200
        after = await end_offsets(api_settings.kafka_brokers, DELIVERY_EVENTS.name)
        counted = [e for _, v in await records_between(api_settings.kafka_brokers, DELIVERY_EVENTS.name, before, after)
                   for e in v.get("events", []) if e["user_id"] == user_id]
        assert [(e["status"], e["message_id"], e["variant"], e["step"]) for e in counted] == \
            [("unsubscribed", str(journey_step), "B", "welcome@1765000000")]
    finally:
        await redis.delete(touch_key(user_id))
        await redis.aclose()


async def test_one_click_with_a_bad_token_shows_an_error_page_and_changes_nothing(client, api_settings, make_user):
    user_id = await make_user()
    bad = tampered(token_for(api_settings, user_id))
    page = client.get(f"/u/{bad}")
    post = client.post(f"/u/{bad}", content=b"List-Unsubscribe=One-Click",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert page.status_code == 403 and post.status_code == 403
    assert post.headers["content-type"].startswith("text/html") and "not valid" in post.text
    assert client.get("/u/short").status_code == 400
    for uid in (user_id, user_id ^ 1):
        assert await fetch(api_settings, "SELECT 1 FROM user_preferences WHERE user_id = $1", uid) == []

"""The templates API against the real stack: CRUD, validation, roles, preview, and test sends to protocol peers."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis
from starlette.testclient import TestClient

from api.app import create_app
from config import Settings
from tests.helpers.api import assert_error, bearer, unique_name
from tests.peers import peer_settings
from schemas.keys import inbox_key

BASE_USER = 10**12 + secrets.randbelow(10**9) * 1000  # this run's own users, far above the demo ids


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tclient(api_settings: Settings, peers: dict) -> Iterator[TestClient]:
    """The API with its providers pointed at this module's peers."""
    settings = peer_settings(api_settings, smtp=peers["smtp"], sms=peers["sms"], push=peers["push"])
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def keys(issue_key) -> dict[str, str]:
    return {role: issue_key(role)["key"] for role in ("admin", "marketer", "analyst")}


@pytest.fixture(scope="module")
async def db(api_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    yield conn
    await conn.execute("DELETE FROM users WHERE user_id >= $1 AND user_id < $2", BASE_USER, BASE_USER + 1000)
    await conn.close()


async def add_user(db: asyncpg.Connection, offset: int, **fields) -> int:
    user_id = BASE_USER + offset
    profile = {"email": f"user{offset}@example.com", "phone": "+14155550100", "first_name": "Zoé", "last_name": "Martin",
               "country": "FR", "language": "fr", "timezone": "Europe/Paris", "attributes": {"plan": "gold"},
               "push_tokens": ["device-token-zoe"]} | fields
    await db.execute(
        "INSERT INTO users (user_id, email, phone, first_name, last_name, country, language, timezone, attributes,"
        " push_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb)",
        user_id, profile["email"], profile["phone"], profile["first_name"], profile["last_name"], profile["country"],
        profile["language"], profile["timezone"], orjson.dumps(profile["attributes"]).decode(),
        orjson.dumps(profile["push_tokens"]).decode(),
    )
    return user_id


EMAIL = {
    "channel": "email",
    "category": "promotional",
    "parts": {"subject": "{{ first_name | default('Hi') }}, {{ discount }} off",
              "html": "<p>Hello {{ first_name }}, use <b>{{ code }}</b></p>",
              "text": "Hello {{ first_name }}, use {{ code }}"},
    "translations": {"fr": {"subject": "{{ first_name }}, {{ discount }} de remise",
                            "html": "<p>Bonjour {{ first_name }}, code <b>{{ code }}</b></p>",
                            "text": "Bonjour {{ first_name }}, code {{ code }}"}},
    "variants": {"B": {"subject": "Last chance: {{ discount }}",
                       "translations": {"fr": {"subject": "Dernière chance : {{ discount }}"}}}},
}
SMS = {"channel": "sms", "parts": {"body": "Hi {{ first_name }}, {{ attributes.plan | title }} members save today"}}
PUSH = {"channel": "push", "parts": {"title": "Sale for {{ first_name }}", "body": "Up to 50% off", "action_url": "app://sale"}}


def create(client: TestClient, key: str, body: dict) -> dict:
    response = client.post("/api/v1/templates", headers=bearer(key), json={"name": unique_name("tmpl"), **body})
    assert response.status_code == 201, response.text
    return response.json()


# ---------------------------------------------------------------- CRUD and validation


def test_created_template_lists_its_campaign_variables_and_estimated_limits(tclient, keys):
    created = create(tclient, keys["marketer"], EMAIL)
    assert created["channel"] == "email" and created["category"] == "promotional"
    assert created["variables"] == ["code", "discount"]
    assert created["parts"] == EMAIL["parts"] and created["variants"] == EMAIL["variants"]
    assert created["estimated_limits"]["within_limits"] and created["estimated_limits"]["subject_length"] > 0
    fetched = tclient.get(f"/api/v1/templates/{created['template_id']}", headers=bearer(keys["analyst"]))
    assert fetched.status_code == 200
    assert fetched.json() == {k: v for k, v in created.items() if k != "estimated_limits"}


def test_sms_template_reports_encoding_and_segments(tclient, keys):
    created = create(tclient, keys["marketer"], {"channel": "sms", "parts": {"body": "Привет {{ first_name }}"}})
    assert created["estimated_limits"]["sms"]["encoding"] == "UCS-2"
    assert created["estimated_limits"]["sms"]["segments"] == 1


def test_syntax_error_is_a_422_naming_the_part_and_line(tclient, keys):
    response = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]),
                            json={"name": unique_name("bad"), "channel": "sms", "parts": {"body": "Hi {{ first_name }"}})
    error = assert_error(response, 422, "validation_error")
    assert error["fields"] == [{"field": "parts.body", "reason": "unexpected '}' at line 1"}]
    assert "parts.body: unexpected '}' at line 1" in error["message"]


def test_channel_limits_and_unknown_parts_are_422s(tclient, keys):
    too_long = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]),
                            json={"name": unique_name("long"), "channel": "sms", "parts": {"body": "ж" * 700}})
    error = assert_error(too_long, 422, "validation_error")
    assert error["fields"][0]["field"] == "parts.body" and "11 UCS-2 segments" in error["fields"][0]["reason"]
    push = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]),
                        json={"name": unique_name("push"), "channel": "push",
                              "parts": {"title": "t" * 80, "body": "b", "subtitle": "x"}})
    fields = {f["field"] for f in assert_error(push, 422, "validation_error")["fields"]}
    assert fields == {"parts.subtitle"}
    missing = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]),
                           json={"name": unique_name("push"), "channel": "push", "parts": {"title": "t" * 80}})
    assert assert_error(missing, 422, "validation_error")["fields"] == [{"field": "parts.body", "reason": "required"}]
    title = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]),
                         json={"name": unique_name("push"), "channel": "push", "parts": {"title": "t" * 80, "body": "b"}})
    assert assert_error(title, 422, "validation_error")["fields"][0]["field"] == "parts.title"
    channel = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]),
                           json={"name": unique_name("fax"), "channel": "fax", "parts": {"body": "x"}})
    assert assert_error(channel, 422, "validation_error")["fields"][0]["field"] == "channel"


# ---------------------------------------------------------------- the spec's table shape (subject, body)


def test_spec_shaped_email_is_stored_as_parts_and_renders_html_and_text(tclient, keys):
    body = {"name": unique_name("spec"), "channel": "email", "subject": "50% Off Summer Sale, {{ first_name }}!",
            "body": "<p>Hello {{ first_name }}, use <b>{{ discount_code }}</b></p>"}
    response = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]), json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["parts"] == {"subject": body["subject"], "html": body["body"]}
    assert "subject" not in created and "body" not in created
    assert created["variables"] == ["discount_code"]
    fetched = tclient.get(f"/api/v1/templates/{created['template_id']}", headers=bearer(keys["analyst"])).json()
    assert fetched["parts"] == created["parts"]
    preview = tclient.post(f"/api/v1/templates/{created['template_id']}/preview", headers=bearer(keys["analyst"]),
                           json={"variables": {"discount_code": "SUMMER50"}})
    assert preview.status_code == 200, preview.text
    parts = preview.json()["parts"]
    assert parts["subject"] == "50% Off Summer Sale, Alex!"
    assert parts["html"] == "<p>Hello Alex, use <b>SUMMER50</b></p>" and parts["text"] == "Hello Alex, use SUMMER50"


def test_spec_shaped_sms_and_push_map_body_and_subject_onto_their_parts(tclient, keys):
    sms = create(tclient, keys["marketer"], {"channel": "sms", "body": "Get 50% off now!"})
    assert sms["parts"] == {"body": "Get 50% off now!"}
    push = create(tclient, keys["marketer"], {"channel": "push", "subject": "Summer Sale", "body": "Get 50% off now!"})
    assert push["parts"] == {"title": "Summer Sale", "body": "Get 50% off now!"}


def test_spec_shape_refuses_a_field_the_channel_lacks_or_both_shapes_at_once(tclient, keys):
    def refused(body: dict) -> list[dict]:
        response = tclient.post("/api/v1/templates", headers=bearer(keys["marketer"]),
                                json={"name": unique_name("bad"), **body})
        return assert_error(response, 422, "validation_error")["fields"]

    lacks = refused({"channel": "sms", "subject": "Sale", "body": "Get 50% off"})
    assert [f["field"] for f in lacks] == ["subject"] and "sms templates have no subject" in lacks[0]["reason"]
    both = refused({"channel": "email", "subject": "Sale", "parts": {"subject": "Sale", "html": "<p>x</p>"}})
    assert [f["field"] for f in both] == ["subject"] and "not both" in both[0]["reason"]
    assert [f["field"] for f in refused({"channel": "email"})] == ["parts"]
    assert refused({"channel": "email", "subject": "Sale"}) == [{"field": "parts.html", "reason": "required"}]
    syntax = refused({"channel": "sms", "body": "Hi {{ first_name }"})
    assert syntax == [{"field": "body", "reason": "unexpected '}' at line 1"}]


def test_patch_in_the_spec_shape_changes_the_part_it_maps_to(tclient, keys):
    created = create(tclient, keys["marketer"], EMAIL)
    path = f"/api/v1/templates/{created['template_id']}"
    patched = tclient.patch(path, headers=bearer(keys["marketer"]), json={"body": "<p>New {{ code }}</p>"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["parts"] == {**EMAIL["parts"], "html": "<p>New {{ code }}</p>"}
    both = tclient.patch(path, headers=bearer(keys["marketer"]), json={"subject": "x", "parts": {"text": "y"}})
    assert [f["field"] for f in assert_error(both, 422, "validation_error")["fields"]] == ["subject"]
    sms = create(tclient, keys["marketer"], SMS)
    lacks = tclient.patch(f"/api/v1/templates/{sms['template_id']}", headers=bearer(keys["marketer"]),
                          json={"subject": "x"})
    assert [f["field"] for f in assert_error(lacks, 422, "validation_error")["fields"]] == ["subject"]


def test_roles_analysts_read_and_editors_write(tclient, keys):
    body = {"name": unique_name("roles"), **SMS}
    assert_error(tclient.post("/api/v1/templates", json=body), 401, "unauthorized")
    assert_error(tclient.post("/api/v1/templates", headers=bearer(keys["analyst"]), json=body), 403, "forbidden")
    created = create(tclient, keys["admin"], SMS)
    path = f"/api/v1/templates/{created['template_id']}"
    assert tclient.get(path, headers=bearer(keys["analyst"])).status_code == 200
    assert tclient.post(path + "/preview", headers=bearer(keys["analyst"]), json={}).status_code == 200
    assert_error(tclient.patch(path, headers=bearer(keys["analyst"]), json={"name": "x"}), 403, "forbidden")
    assert_error(tclient.delete(path, headers=bearer(keys["analyst"])), 403, "forbidden")
    assert_error(tclient.post(path + "/test-send", headers=bearer(keys["analyst"]), json={"to": "+14155550100"}),
                 403, "forbidden")


def test_unknown_template_is_404_everywhere(tclient, keys):
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/preview"), ("POST", "/test-send")):
        response = tclient.request(method, f"/api/v1/templates/9223372036854775807{suffix}",
                                   headers=bearer(keys["admin"]), json={})
        assert_error(response, 404, "not_found")


def test_list_pages_newest_first_and_filters_by_channel(tclient, keys):
    mine = [create(tclient, keys["marketer"], PUSH)["template_id"] for _ in range(3)]
    first = tclient.get("/api/v1/templates?channel=push&limit=2", headers=bearer(keys["analyst"])).json()
    assert [t["template_id"] for t in first["templates"]] == mine[::-1][:2]
    assert all(t["channel"] == "push" for t in first["templates"]) and first["next_cursor"]
    second = tclient.get(f"/api/v1/templates?channel=push&limit=2&cursor={first['next_cursor']}",
                         headers=bearer(keys["analyst"])).json()
    assert second["templates"][0]["template_id"] == mine[0]
    bad = tclient.get("/api/v1/templates?channel=fax&limit=0&cursor=zzz", headers=bearer(keys["analyst"]))
    assert {f["field"] for f in assert_error(bad, 422, "validation_error")["fields"]} == {"channel", "limit"}


async def test_patch_is_a_merge_patch_checked_as_a_whole_and_audited(tclient, keys, api_settings):
    created = create(tclient, keys["marketer"], EMAIL)
    path = f"/api/v1/templates/{created['template_id']}"
    patched = tclient.patch(path, headers=bearer(keys["marketer"]),
                            json={"parts": {"subject": "New {{ promo }}"}, "translations": {"fr": None}, "variants": None})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["parts"]["subject"] == "New {{ promo }}" and body["parts"]["html"] == EMAIL["parts"]["html"]
    assert body["translations"] == {} and body["variants"] == {}
    assert body["variables"] == ["code", "promo"] and body["updated_at"] > created["updated_at"]

    broken = tclient.patch(path, headers=bearer(keys["marketer"]), json={"parts": {"html": "{% if %}"}})
    assert assert_error(broken, 422, "validation_error")["fields"][0]["field"] == "parts.html"
    channel = tclient.patch(path, headers=bearer(keys["marketer"]), json={"channel": "sms"})
    assert assert_error(channel, 422, "validation_error")["fields"][0]["field"] == "channel"
    required = tclient.patch(path, headers=bearer(keys["marketer"]), json={"parts": {"subject": None}})
    assert assert_error(required, 422, "validation_error")["fields"] == [{"field": "parts.subject", "reason": "required"}]

    conn = await asyncpg.connect(api_settings.postgres_dsn)
    try:
        rows = await conn.fetch("SELECT action, before, after FROM audit_log WHERE entity_type = 'template'"
                                " AND entity_id = $1 ORDER BY audit_id", str(created["template_id"]))
    finally:
        await conn.close()
    assert [r["action"] for r in rows] == ["template.created", "template.updated"]
    assert orjson.loads(rows[1]["before"])["parts"]["subject"] == EMAIL["parts"]["subject"]
    assert orjson.loads(rows[1]["after"])["parts"]["subject"] == "New {{ promo }}"


async def test_delete_is_refused_while_a_live_campaign_uses_the_template(tclient, keys, api_settings):
    created = create(tclient, keys["marketer"], SMS)
    template_id = created["template_id"]
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    try:
        campaign_id = await conn.fetchval(
            "INSERT INTO campaigns (name, status, channels, content) VALUES ($1, 'draft', '{sms}', $2::jsonb)"
            " RETURNING campaign_id",
            unique_name("uses-template"), orjson.dumps({"sms": {"template_id": template_id, "variables": {}}}).decode(),
        )
        refused = tclient.delete(f"/api/v1/templates/{template_id}", headers=bearer(keys["marketer"]))
        error = assert_error(refused, 409, "conflict")
        assert str(campaign_id) in error["message"]
        await conn.execute("UPDATE campaigns SET status = 'completed' WHERE campaign_id = $1", campaign_id)
        deleted = tclient.delete(f"/api/v1/templates/{template_id}", headers=bearer(keys["marketer"]))
        assert deleted.status_code == 204
        assert_error(tclient.get(f"/api/v1/templates/{template_id}", headers=bearer(keys["analyst"])), 404, "not_found")
        audit = await conn.fetchval("SELECT action FROM audit_log WHERE entity_type = 'template' AND entity_id = $1"
                                    " ORDER BY audit_id DESC LIMIT 1", str(template_id))
        assert audit == "template.deleted"
    finally:
        await conn.execute("DELETE FROM campaigns WHERE campaign_id = $1", campaign_id)
        await conn.close()


# ---------------------------------------------------------------- preview


async def test_preview_renders_for_a_stored_user_in_their_language(tclient, keys, db):
    user_id = await add_user(db, 1, language="fr-CA", first_name="Zoé")
    template = create(tclient, keys["marketer"], EMAIL)
    response = tclient.post(f"/api/v1/templates/{template['template_id']}/preview", headers=bearer(keys["analyst"]),
                            json={"user_id": user_id, "variables": {"discount": "20 %", "code": "ETE20"}})
    assert response.status_code == 200, response.text
    preview = response.json()
    assert (preview["language"], preview["variant"], preview["user_id"]) == ("fr", None, user_id)
    assert preview["parts"]["subject"] == "Zoé, 20 % de remise"
    assert preview["parts"]["html"] == "<p>Bonjour Zoé, code <b>ETE20</b></p>"
    assert preview["limits"]["within_limits"] and preview["limits"]["subject_length"] == len("Zoé, 20 % de remise")

    variant = tclient.post(f"/api/v1/templates/{template['template_id']}/preview", headers=bearer(keys["analyst"]),
                           json={"user_id": user_id, "variant": "B", "variables": {"discount": "20 %", "code": "X"}})
    assert variant.json()["parts"]["subject"] == "Dernière chance : 20 %" and variant.json()["variant"] == "B"


def test_preview_with_sample_data_counts_sms_segments(tclient, keys):
    template = create(tclient, keys["marketer"], SMS)
    response = tclient.post(f"/api/v1/templates/{template['template_id']}/preview", headers=bearer(keys["analyst"]),
                            json={"sample": {"first_name": "Ана " * 20, "attributes": {"plan": "gold"}}})
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["parts"]["body"].startswith("Hi Ана") and "Gold members" in preview["parts"]["body"]
    assert preview["limits"]["sms"]["encoding"] == "UCS-2" and preview["limits"]["sms"]["segments"] == 2


def test_preview_names_missing_variables_unknown_variants_and_users(tclient, keys):
    template = create(tclient, keys["marketer"], EMAIL)
    path = f"/api/v1/templates/{template['template_id']}/preview"
    missing = tclient.post(path, headers=bearer(keys["analyst"]), json={"variables": {"discount": "5%"}})
    assert assert_error(missing, 422, "validation_error")["fields"] == [
        {"field": "variables.code", "reason": "the template uses it and no value was given"}]
    variant = tclient.post(path, headers=bearer(keys["analyst"]), json={"variant": "Z", "variables": {}})
    assert assert_error(variant, 422, "validation_error")["fields"][0]["field"] == "variant"
    nobody = tclient.post(path, headers=bearer(keys["analyst"]), json={"user_id": BASE_USER + 999})
    assert_error(nobody, 404, "not_found")
    both = tclient.post(path, headers=bearer(keys["analyst"]), json={"user_id": 1, "sample": {}})
    assert assert_error(both, 422, "validation_error")["fields"][0]["field"] == "sample"


# ---------------------------------------------------------------- test-send


async def test_test_send_email_arrives_over_smtp(tclient, keys, live, db):
    user_id = await add_user(db, 2, language="en", first_name="Ada", email="ada@example.com")
    template = create(tclient, keys["marketer"], EMAIL)
    response = tclient.post(f"/api/v1/templates/{template['template_id']}/test-send", headers=bearer(keys["marketer"]),
                            json={"user_id": user_id, "variables": {"discount": "30%", "code": "SUN30"}})
    assert response.status_code == 200, response.text
    sent = response.json()
    assert sent["status"] == "sent" and sent["to"] == "ada@example.com" and "queued" in sent["provider_id"]
    [mail] = live["smtp"].wait_for(1)
    assert mail.rcpt_tos == ["ada@example.com"] and mail.mail_from == "campaigns@herald.local"
    message = mail.message
    assert message["Subject"] == "Ada, 30% off" and message["X-Herald-Test-Send"] == "1"
    assert message["Message-ID"].startswith(f"<{sent['message_id']}@")
    html, text = message.get_body(("html",)).get_content(), message.get_body(("plain",)).get_content()
    assert html.startswith("<p>Hello Ada, use <b>SUN30</b></p>") and text.startswith("Hello Ada, use SUN30\r\n")
    # The CAN-SPAM footer, as campaign emails carry it: the sender's postal address and a way out.
    postal = tclient.app.state.settings.sender_postal_address
    assert postal and postal in text and "Unsubscribe: " in text and "Unsubscribe</a>" in html


def test_test_send_sms_and_push_reach_the_providers_in_their_shapes(tclient, keys, live):
    sms = create(tclient, keys["marketer"], SMS)
    response = tclient.post(f"/api/v1/templates/{sms['template_id']}/test-send", headers=bearer(keys["marketer"]),
                            json={"to": "+14155550199", "sample": {"first_name": "Ada"}})
    assert response.status_code == 200, response.text
    assert response.json()["provider_id"].startswith("SM")
    [request] = live["sms"].wait_for(1)
    assert request.form()["To"] == "+14155550199"
    assert request.form()["Body"] == "Hi Ada, Premium members save today"

    push = create(tclient, keys["marketer"], PUSH)
    response = tclient.post(f"/api/v1/templates/{push['template_id']}/test-send", headers=bearer(keys["marketer"]),
                            json={"to": "device-token-xyz", "sample": {"first_name": "Ada"}})
    assert response.status_code == 200, response.text
    [request] = live["push"].wait_for(1)
    message = request.json()["message"]
    assert message["token"] == "device-token-xyz" and message["notification"] == {"title": "Sale for Ada",
                                                                                  "body": "Up to 50% off"}
    assert message["data"]["action_url"] == "app://sale"


def test_test_send_refused_by_the_provider_is_a_clear_error(tclient, keys, live):
    sms = create(tclient, keys["marketer"], SMS)
    path = f"/api/v1/templates/{sms['template_id']}/test-send"
    invalid = tclient.post(path, headers=bearer(keys["marketer"]), json={"to": "+15005550001"})
    error = assert_error(invalid, 422, "recipient_rejected")
    assert error["fields"][0]["field"] == "to" and "21211" in error["fields"][0]["reason"]
    live["sms"].fail_next(1, 500)
    down = tclient.post(path, headers=bearer(keys["marketer"]), json={"to": "+14155550199"})
    assert "500" in assert_error(down, 502, "provider_unavailable")["message"]
    malformed = tclient.post(path, headers=bearer(keys["marketer"]), json={"to": "0612345678"})
    assert assert_error(malformed, 422, "validation_error")["fields"][0]["field"] == "to"

    push = create(tclient, keys["marketer"], PUSH)
    gone = tclient.post(f"/api/v1/templates/{push['template_id']}/test-send", headers=bearer(keys["marketer"]),
                        json={"to": "unregistered-token-1"})
    assert "UNREGISTERED" in assert_error(gone, 422, "recipient_rejected")["message"]


def test_test_send_with_provider_credentials_refused_is_a_502(api_settings, peers, keys):
    settings = peer_settings(api_settings, sms=peers["sms"]).model_copy(update={"sms_auth_token": "wrong"})
    with TestClient(create_app(settings)) as client:
        sms = create(client, keys["marketer"], SMS)
        response = client.post(f"/api/v1/templates/{sms['template_id']}/test-send", headers=bearer(keys["marketer"]),
                               json={"to": "+14155550199"})
    assert "20003" in assert_error(response, 502, "provider_rejected")["message"]


async def test_test_send_in_app_and_webhook(tclient, keys, live, api_settings):
    in_app = create(tclient, keys["marketer"], {"channel": "in_app", "parts": {"title": "Hi {{ first_name }}",
                                                                               "body": "New offers"}})
    user_id = BASE_USER + 3
    redis = Redis.from_url(api_settings.redis_url)
    try:
        await redis.delete(inbox_key(user_id))
        response = tclient.post(f"/api/v1/templates/{in_app['template_id']}/test-send",
                                headers=bearer(keys["marketer"]), json={"to": str(user_id), "sample": {"first_name": "Ada"}})
        assert response.status_code == 200, response.text
        [entry] = [orjson.loads(e) for e in await redis.lrange(inbox_key(user_id), 0, -1)]
    finally:
        await redis.delete(inbox_key(user_id))
        await redis.aclose()
    assert entry["title"] == "Hi Ada" and entry["message_id"] == response.json()["message_id"]

    hook = create(tclient, keys["marketer"], {"channel": "webhook",
                                              "parts": {"payload": {"event": "offer", "name": "{{ first_name }}"}}})
    assert hook["parts"]["payload"] == '{"event":"offer","name":"{{ first_name }}"}'
    response = tclient.post(f"/api/v1/templates/{hook['template_id']}/test-send", headers=bearer(keys["marketer"]),
                            json={"to": live["webhook"].url, "sample": {"first_name": 'A "quoted" name'}})
    assert response.status_code == 200, response.text
    [request] = live["webhook"].wait_for(1)
    assert request.json() == {"event": "offer", "name": 'A "quoted" name'}

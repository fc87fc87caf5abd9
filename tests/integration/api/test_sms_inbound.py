"""Inbound SMS keywords and consent through the real API, PostgreSQL and Kafka.

Each message is posted as Twilio posts it (tests/peers/twilio.py ``inbound_sms``: the form, signed
with X-Twilio-Signature over Settings.public_url). That the gate then refuses the SMS is
tests/integration/pipeline/test_sms_consent.py.
"""

from __future__ import annotations

import random
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import asyncpg
import orjson
import pytest

from schemas.preferences import PreferenceUpdate
from tests.helpers.api import assert_error, bearer
from tests.integration.api.test_preferences import fetch, published_after, topic_end
from tests.peers.twilio import inbound_sms

PATH = "/callbacks/twilio/inbound"
EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def reply(text: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{escape(text)}</Message></Response>'


def unique_phone() -> str:
    return f"+1999{random.randrange(10**7, 10**8)}"  # +1 999: no real area code, nobody else's test user


@pytest.fixture
def text(client, api_settings):
    """Post an SMS from ``sender`` to Herald's webhook, signed as Twilio signs it."""

    def send(sender: str, body: str, opt_out_type: str | None = None, token: str | None = None):
        url = api_settings.public_url.rstrip("/") + PATH
        _, payload, headers = inbound_sms(token or api_settings.sms_auth_token, url, sender, body,
                                          opt_out_type=opt_out_type)
        return client.post(PATH, content=payload, headers=headers)

    return send


@pytest.fixture
async def phone_user(make_user, api_settings):
    async def make() -> tuple[int, str]:
        user_id, phone = await make_user(), unique_phone()
        conn = await asyncpg.connect(api_settings.postgres_dsn)
        try:
            await conn.execute("UPDATE users SET phone = $2 WHERE user_id = $1", user_id, phone)
        finally:
            await conn.close()
        return user_id, phone

    return make


def prefs(client, admin_key, user_id: int) -> dict:
    response = client.get(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key))
    assert response.status_code == 200, response.text
    return response.json()


async def test_stop_withdraws_sms_consent_records_it_and_publishes_it(client, admin_key, api_settings, phone_user, text):
    user_id, phone = await phone_user()
    offsets = await topic_end(api_settings)
    response = text(phone, "  Stop ")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text == reply(api_settings.sms_stop_text)

    got = prefs(client, admin_key, user_id)
    assert got["sms_enabled"] is False and got["email_enabled"] is True
    assert got["consent"]["sms"]["granted"] is False and got["consent"]["sms"]["source"] == "sms_keyword"
    [(_, _, value)] = await published_after(api_settings, offsets, user_id)
    update = PreferenceUpdate.model_validate(value)
    assert update.channels["sms"] is False and "sms" in update.unsubscribed and update.consented == []
    (unsub,) = await fetch(api_settings, "SELECT channel, source, reason FROM unsubscribes WHERE user_id = $1", user_id)
    assert dict(unsub) == {"channel": "sms", "source": "sms_keyword", "reason": "replied Stop"}
    (audit,) = await fetch(api_settings, "SELECT actor, action, before, after FROM audit_log"
                           " WHERE entity_type = 'user_preferences' AND entity_id = $1", str(user_id))
    assert (audit["actor"], audit["action"]) == ("sms-keyword", "preferences.sms_opt_out")
    assert orjson.loads(audit["before"])["sms_enabled"] is True and orjson.loads(audit["after"])["sms_enabled"] is False


@pytest.mark.parametrize("word", ["STOPALL", "unsubscribe", "Cancel", " end", "QUIT ", "revoke", "OptOut"])
async def test_every_opt_out_keyword_switches_sms_off(client, admin_key, phone_user, text, word):
    user_id, phone = await phone_user()
    assert text(phone, word).status_code == 200
    assert prefs(client, admin_key, user_id)["sms_enabled"] is False


@pytest.mark.parametrize("word", ["START", " unstop", "Yes"])
async def test_start_unstop_yes_give_consent_back(client, admin_key, api_settings, phone_user, text, word):
    user_id, phone = await phone_user()
    text(phone, "STOP")
    offsets = await topic_end(api_settings)
    response = text(phone, word)
    assert response.text == reply(api_settings.sms_start_text)
    got = prefs(client, admin_key, user_id)
    assert got["sms_enabled"] is True
    assert (got["consent"]["sms"]["granted"], got["consent"]["sms"]["source"]) == (True, "sms_keyword")
    [(_, _, value)] = await published_after(api_settings, offsets, user_id)
    assert PreferenceUpdate.model_validate(value).consented == ["sms"]


async def test_help_is_answered_with_the_configured_text_and_changes_nothing(client, admin_key, phone_user, text,
                                                                            api_settings):
    user_id, phone = await phone_user()
    response = text(phone, " help ")
    assert response.status_code == 200 and response.text == reply(api_settings.sms_help_text)
    assert ElementTree.fromstring(response.content).findtext("Message") == api_settings.sms_help_text
    got = prefs(client, admin_key, user_id)
    assert got["version"] == 0 and got["consent"]["sms"] == {"granted": False, "at": None, "source": "default",
                                                             "text_version": None}  # SMS needs opt-in


async def test_a_keyword_inside_a_sentence_is_acknowledged_and_opts_nobody_out(client, admin_key, phone_user, text):
    user_id, phone = await phone_user()
    for body in ("please stop texting me", "Stop!", "yes please"):
        response = text(phone, body)
        assert response.status_code == 200 and response.text == EMPTY
    assert prefs(client, admin_key, user_id)["sms_enabled"] is True


async def test_twilio_opt_out_type_wins_over_the_body(client, admin_key, phone_user, text):
    user_id, phone = await phone_user()
    text(phone, "no more please", opt_out_type="STOP")
    assert prefs(client, admin_key, user_id)["sms_enabled"] is False


async def test_every_user_with_the_number_is_opted_out(client, admin_key, api_settings, make_user, phone_user, text):
    first, phone = await phone_user()
    second = await make_user()
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    try:
        await conn.execute("UPDATE users SET phone = $2 WHERE user_id = $1", second, phone)
    finally:
        await conn.close()
    text(phone, "STOP")
    assert prefs(client, admin_key, first)["sms_enabled"] is False
    assert prefs(client, admin_key, second)["sms_enabled"] is False


def test_an_unknown_number_gets_an_empty_response(text):
    response = text(unique_phone(), "STOP")
    assert response.status_code == 200 and response.text == EMPTY


async def test_a_forged_signature_is_refused_and_changes_nothing(client, admin_key, phone_user, text):
    user_id, phone = await phone_user()
    response = text(phone, "STOP", token="not-the-auth-token")
    assert_error(response, 403, "invalid_signature")
    unsigned = client.post(PATH, content=b"From=%2B1999&Body=STOP",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(unsigned, 403, "invalid_signature")
    assert prefs(client, admin_key, user_id)["sms_enabled"] is True


def test_a_body_that_is_not_a_form_is_refused(client):
    assert_error(client.post(PATH, json={"Body": "STOP"}), 415, "unsupported_media_type")


# ---- consent per channel through the preferences API ----------------------------------------------


async def test_consent_is_set_with_its_source_time_and_text_version(client, admin_key, api_settings, make_user):
    user_id = await make_user()
    offsets = await topic_end(api_settings)
    body = {"consent": {"sms": {"granted": True, "source": "signup_form", "text_version": "sms-terms-v3",
                                "at": "2026-11-20T09:30:00Z"}}}
    response = client.patch(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["consent"]["sms"] == {"granted": True, "at": "2026-11-20T09:30:00Z",
                                                 "source": "signup_form", "text_version": "sms-terms-v3"}
    [(_, _, value)] = await published_after(api_settings, offsets, user_id)
    assert PreferenceUpdate.model_validate(value).consented == ["sms"]
    (audit,) = await fetch(api_settings, "SELECT after FROM audit_log WHERE entity_type = 'user_preferences'"
                           " AND entity_id = $1", str(user_id))
    assert orjson.loads(audit["after"])["consent"]["sms"]["text_version"] == "sms-terms-v3"


async def test_bad_consent_gets_422_naming_the_field(client, admin_key, make_user):
    user_id = await make_user()
    body = {"consent": {"sms": {"granted": True, "source": "signup_form"}}}
    response = client.patch(f"/api/v1/users/{user_id}/preferences", headers=bearer(admin_key), json=body)
    assert response.status_code == 422
    assert any(p["field"].startswith("consent.sms.text_version") for p in response.json()["error"]["fields"]), \
        response.text


def test_the_inbound_webhook_is_in_the_openapi_document(client):
    doc = client.get("/api/v1/openapi.json").json()
    post = doc["paths"][PATH]["post"]
    assert "application/xml" in post["responses"]["200"]["content"] and post["security"] == []

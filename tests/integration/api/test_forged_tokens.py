"""Mutated tokens and signatures posted to the real endpoints are refused and counted nowhere: unsubscribe
(400/403, no preference changed), tracking (400, no event) and provider callbacks (403, no event).

Each forgery is a valid token or signature with one character changed, including a change of the last
character's spare base64 bits, which decodes to the very bytes that were signed. Nothing reaches
delivery-events: after the forgeries a valid open of another campaign is published as a sentinel, and every
record up to it is checked."""

from __future__ import annotations

import random
import secrets
import time
import uuid
from urllib.parse import urlencode

import asyncpg
import orjson

from pipeline import callbacks as cb
from pipeline.channels.tracking import link_key, make_token
from pipeline.signing import signing_key
from pipeline.unsubscribe import make_unsubscribe_token
from schemas.topics import DELIVERY_EVENTS
from tests.helpers.api import assert_error
from tests.helpers.kafka import end_offsets, read
from tests.peers.callbacks import sendgrid_signer

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def one_char_changes(token: str, alphabet: str = B64URL, count: int = 6) -> list[str]:
    """A few one-character changes at random places, and the last character with a spare bit flipped."""
    rng = random.Random(token)
    out = []
    for i in rng.sample(range(len(token)), count):
        out.append(token[:i] + rng.choice([c for c in alphabet if c != token[i]]) + token[i + 1:])
    out.append(token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1])
    return out


async def test_mutated_tokens_and_signatures_are_refused_and_nothing_is_counted(client, api_settings, make_user):
    start = await end_offsets(api_settings.kafka_brokers, DELIVERY_EVENTS.name)
    key = signing_key(api_settings)
    campaign, message, user = random.randrange(9 * 10**15, 10**16), uuid.uuid4(), await make_user()

    # Unsubscribe: the JSON endpoint and the one-click POST.
    token = make_unsubscribe_token(key, user, "email", campaign)
    for forged in one_char_changes(token):
        answer = client.post("/api/v1/unsubscribe", json={"token": forged})
        assert answer.status_code in (400, 403), answer.text
        assert_error(answer, answer.status_code, answer.json()["error"]["code"])
        assert client.post(f"/u/{forged}", data={"List-Unsubscribe": "One-Click"}).status_code in (400, 403)
    conn = await asyncpg.connect(api_settings.postgres_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM user_preferences WHERE user_id = $1", user) == 0
        assert await conn.fetchval("SELECT count(*) FROM unsubscribes WHERE user_id = $1", user) == 0
    finally:
        await conn.close()

    # Tracking: a 52-byte click token (its last character has four spare bits) and a version 2 open token.
    links = link_key(key)
    click = make_token(links, message, campaign, user, "A", "https://shop.example/" + "x" * 11)
    opened = make_token(links, message, campaign, user, "A", issued_at=int(time.time()) - 3600)
    for forged in one_char_changes(click):
        assert_error(client.get(f"/t/c/{forged}", follow_redirects=False), 400, "invalid_token")
    for forged in one_char_changes(opened):
        assert_error(client.get(f"/t/o/{forged}"), 400, "invalid_token")

    # Callbacks: Twilio's HMAC-SHA1 and SendGrid's ECDSA signature, one character changed.
    args = cb.callback_args(str(message), campaign, user, "email")
    query = urlencode(args)
    url = api_settings.public_url.rstrip("/") + "/callbacks/twilio/status?" + query
    form = {"MessageSid": f"SM{secrets.token_hex(16)}", "MessageStatus": "delivered"}
    signature = cb.twilio_signature(api_settings.sms_auth_token, url, form.items())
    b64 = B64URL[:62] + "+/"
    for forged in one_char_changes(signature.rstrip("="), b64):
        answer = client.post(f"/callbacks/twilio/status?{query}", content=urlencode(form).encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded",
                                      "X-Twilio-Signature": forged + "=" * (len(signature) - len(signature.rstrip("=")))})
        assert_error(answer, 403, "invalid_signature")
    body = orjson.dumps([{"email": "x@example.test", "timestamp": int(time.time()), "event": "delivered",
                          "sg_event_id": secrets.token_hex(8), "sg_message_id": "m.0", **args}])
    headers = sendgrid_signer()(body)
    good = headers["X-Twilio-Email-Event-Webhook-Signature"]
    for forged in one_char_changes(good.rstrip("="), b64):
        forged += "=" * (len(good) - len(good.rstrip("=")))
        answer = client.post("/callbacks/sendgrid/events", content=body,
                             headers={**headers, "X-Twilio-Email-Event-Webhook-Signature": forged})
        assert_error(answer, 403, "invalid_signature")

    # The sentinel: a valid open of another campaign. Nothing before it is about the forged ones.
    sentinel = campaign + 1
    assert client.get(f"/t/o/{make_token(links, uuid.uuid4(), sentinel, user, 'A')}").status_code == 200

    def events(records):
        return [e for r in records if isinstance(r.value, dict) for e in r.value.get("events", [])]

    records = await read(api_settings.kafka_brokers, start,
                         until=lambda kept: any(e.get("campaign_id") == sentinel for e in events(kept)))
    forged_events = [e for e in events(records) if e.get("campaign_id") == campaign or e.get("user_id") == user
                     and e.get("campaign_id") != sentinel or e.get("message_id") == str(message)]
    assert forged_events == []

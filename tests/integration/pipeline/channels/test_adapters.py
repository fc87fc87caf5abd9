"""Each channel adapter against a real protocol peer: request shapes, outcomes, failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket

import orjson
from redis.asyncio import Redis

from pipeline.channels import PERMANENT, SENT, TRANSIENT, Message, open_channel
from pipeline.channels.in_app import INBOX_CAP
from pipeline.channels.webhook import WebhookChannel
from schemas.keys import inbox_key

EMAIL = {"subject": "Summer sale, Zoé", "text": "Hello Zoé", "html": "<p>Hello <b>Zoé</b></p>"}



async def test_email_arrives_over_smtp_with_envelope_headers_and_both_alternatives(channel_settings, live):
    async with open_channel("email", channel_settings) as email:
        result = await email.send(Message("email", "zoe@example.com", EMAIL, "msg-1",
                                          headers={"List-Unsubscribe": "<https://h.example/u>"}))
    assert result.outcome == SENT and "queued" in result.provider_id
    [received] = live["smtp"].wait_for(1)
    assert received.mail_from == "campaigns@herald.local" and received.rcpt_tos == ["zoe@example.com"]
    message = received.message
    assert message["Subject"] == "Summer sale, Zoé" and message["From"].addresses[0].display_name == "Herald"
    assert message["List-Unsubscribe"] == "<https://h.example/u>"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hello <b>Zoé</b></p>"
    assert message.get_body(("plain",)).get_content().strip() == "Hello Zoé"


async def test_email_connections_are_reused_across_sends(channel_settings, live):
    async with open_channel("email", channel_settings, pool_size=2) as email:
        results = await email.send_many([Message("email", f"u{i}@example.com", EMAIL, f"m{i}") for i in range(40)])
        opened = len(email._open)
    assert [r.outcome for r in results] == [SENT] * 40 and opened <= 2
    assert len(live["smtp"].wait_for(40)) == 40


async def test_email_hard_bounce_is_permanent_and_a_4xx_is_transient(channel_settings, live):
    live["smtp"].reject("gone@example.com")
    live["smtp"].fail_next(1)
    async with open_channel("email", channel_settings) as email:
        bounced = await email.send(Message("email", "gone@example.com", EMAIL, "m1"))
        deferred = await email.send(Message("email", "zoe@example.com", EMAIL, "m2"))
        after = await email.send(Message("email", "zoe@example.com", EMAIL, "m3"))
    assert (bounced.outcome, bounced.code, bounced.recipient_problem) == (PERMANENT, "550", True)
    assert (deferred.outcome, deferred.code) == (TRANSIENT, "451")
    assert after.outcome == SENT


async def test_email_to_a_server_that_is_down_is_transient(channel_settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with open_channel("email", channel_settings.model_copy(update={"smtp_port": port})) as email:
        result = await email.send(Message("email", "zoe@example.com", EMAIL, "m1"))
    assert result.outcome == TRANSIENT and "cannot connect" in result.reason


async def test_sms_is_a_twilio_shaped_form_post_with_basic_auth(channel_settings, live):
    async with open_channel("sms", channel_settings) as sms:
        result = await sms.send(Message("sms", "+14155550123", {"body": "Hi Zoé €5 off"}, "s1"))
    assert result.outcome == SENT and result.provider_id.startswith("SM")
    [request] = live["sms"].wait_for(1)
    assert request.method == "POST" and request.path == "/2010-04-01/Accounts/ACherald/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"ACherald:herald-local").decode()
    assert request.form() == {"To": "+14155550123", "From": channel_settings.sms_from, "Body": "Hi Zoé €5 off"}


async def test_sms_errors_map_to_permanent_recipient_problems_or_transient(channel_settings, live):
    live["sms"].fail_next(1, 429, headers={"Retry-After": "3"})
    async with open_channel("sms", channel_settings) as sms:
        throttled = await sms.send(Message("sms", "+14155550123", {"body": "x"}, "s1"))
        invalid = await sms.send(Message("sms", "+15005550001", {"body": "x"}, "s2"))
        stopped = await sms.send(Message("sms", "+15005550004", {"body": "x"}, "s3"))
    assert (throttled.outcome, throttled.retry_after_s) == (TRANSIENT, 3.0)
    assert (invalid.outcome, invalid.code, invalid.recipient_problem) == (PERMANENT, "21211", True)
    assert "not a valid phone number" in invalid.reason and "5005550001" not in invalid.reason  # no number kept
    assert (stopped.code, stopped.recipient_problem) == ("21610", True)


async def test_sms_with_wrong_credentials_is_permanent_but_not_the_recipients_fault(channel_settings):
    async with open_channel("sms", channel_settings.model_copy(update={"sms_auth_token": "wrong"})) as sms:
        result = await sms.send(Message("sms", "+14155550123", {"body": "x"}, "s1"))
    assert (result.outcome, result.code, result.recipient_problem) == (PERMANENT, "20003", False)


async def test_push_is_an_fcm_v1_message_with_bearer_token(channel_settings, live):
    parts = {"title": "Sale", "body": "50% off", "action_url": "app://sale", "image_url": "https://img.example/a.png"}
    async with open_channel("push", channel_settings) as push:
        result = await push.send(Message("push", "device-token-123", parts, "p1", campaign_id=42, data={"k": "v"}))
    assert result.outcome == SENT and result.provider_id.startswith("projects/herald/messages/")
    [request] = live["push"].wait_for(1)
    assert request.headers["authorization"] == "Bearer herald-local"
    assert request.path == "/v1/projects/herald/messages:send"
    message = request.json()["message"]
    assert message["token"] == "device-token-123"
    assert message["notification"] == {"title": "Sale", "body": "50% off", "image": "https://img.example/a.png"}
    assert message["data"] == {"message_id": "p1", "k": "v", "campaign_id": "42", "action_url": "app://sale"}


async def test_push_unregistered_token_is_permanent_and_unavailable_is_transient(channel_settings, live):
    live["push"].fail_next(1, 503, body={"error": {"code": 503, "status": "UNAVAILABLE", "message": "busy"}})
    async with open_channel("push", channel_settings) as push:
        busy = await push.send(Message("push", "device-token-123", {"title": "t", "body": "b"}, "p1"))
        gone = await push.send(Message("push", "unregistered-abc", {"title": "t", "body": "b"}, "p2"))
    assert (busy.outcome, busy.code) == (TRANSIENT, "UNAVAILABLE")
    assert (gone.outcome, gone.code, gone.recipient_problem) == (PERMANENT, "UNREGISTERED", True)


async def test_webhook_posts_the_rendered_json_signed(channel_settings, live):
    hook = WebhookChannel(channel_settings, secret="s3cret")
    try:
        ok = await hook.send(Message("webhook", live["webhook"].url, {"payload": '{"user": 7}'}, "w1"))
        live["webhook"].fail_next(1, 500)
        failed = await hook.send(Message("webhook", live["webhook"].url, {"payload": '{"user": 7}'}, "w2"))
        live["webhook"].fail_next(1, 410)
        gone = await hook.send(Message("webhook", live["webhook"].url, {"payload": '{"user": 7}'}, "w3"))
    finally:
        await hook.aclose()
    request = live["webhook"].wait_for(3)[0]
    assert ok.outcome == SENT and request.json() == {"user": 7}
    assert request.headers["x-herald-message-id"] == "w1"
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-herald-signature"] == expected
    assert failed.outcome == TRANSIENT and gone.outcome == PERMANENT


async def test_in_app_messages_land_in_a_capped_redis_inbox(settings):
    redis = Redis.from_url(settings.redis_url)
    user_id = 10**12 + 424242
    try:
        await redis.delete(inbox_key(user_id))
        async with open_channel("in_app", settings, redis=redis) as inbox:
            first = await inbox.send(Message("in_app", str(user_id), {"title": "Hi", "body": "B"}, "i0", campaign_id=5))
            many = await inbox.send_many([Message("in_app", str(user_id), {"title": "T", "body": str(i)}, f"i{i}")
                                          for i in range(1, INBOX_CAP + 5)])
            bad = await inbox.send(Message("in_app", "not-a-user", {"title": "T", "body": "B"}, "x"))
        entries = [orjson.loads(e) for e in await redis.lrange(inbox_key(user_id), 0, -1)]
    finally:
        await redis.delete(inbox_key(user_id))
        await redis.aclose()
    assert first.outcome == SENT and all(r.outcome == SENT for r in many)
    assert bad.outcome == PERMANENT
    assert len(entries) == INBOX_CAP and entries[0]["message_id"] == f"i{INBOX_CAP + 4}"
    assert entries[0]["title"] == "T" and entries[0]["created_at"]


async def test_sendgrid_peer_accepts_a_batch_and_counts_its_recipients(settings):
    import httpx

    from tests.peers import SendGridPeer

    with SendGridPeer() as peer:
        async with httpx.AsyncClient() as client:
            body = {"from": {"email": "campaigns@herald.local"}, "subject": "Sale",
                    "content": [{"type": "text/plain", "value": "Hi"}],
                    "personalizations": [{"to": [{"email": f"u{i}@example.com"}]} for i in range(1000)]}
            accepted = await client.post(peer.url, json=body, headers={"Authorization": "Bearer herald-local"})
            too_many = await client.post(peer.url, json={**body, "personalizations": body["personalizations"] * 2},
                                         headers={"Authorization": "Bearer herald-local"})
            no_key = await client.post(peer.url, json=body)
    assert accepted.status_code == 202 and accepted.headers["x-message-id"] and peer.delivered == 1000
    assert too_many.status_code == 400 and too_many.json()["errors"][0]["field"] == "personalizations"
    assert no_key.status_code == 401

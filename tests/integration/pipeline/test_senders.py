"""The send_<channel> stage on the real stack: a real worker process, Kafka, PostgreSQL, Redis, and
local provider peers (aiosmtpd SMTP, Twilio-, FCM- and webhook-shaped HTTP) on ephemeral ports.

The worker is spawned with HERALD_* variables pointing at this module's peers
(``sender_worker``). Outbox batches are produced straight to ``outbox.<channel>``
(what the gate would release), one per partition of their users.

Senders consume in groups ``<app_id>.send_<channel>``: another worker alive at the
same time (the session ``worker`` fixture, other people's tests) takes partitions
away from this one and sends with ITS provider settings, so run these alone, or
give the whole session one set of peers.
"""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from config import Settings
from schemas.topics import DEAD_LETTERS, DELIVERY_EVENTS
from pipeline.partitioning import user_partitions
from schemas.messages import MessageBatch, Recipient, message_id
from pipeline.dlq import replay
from tests.helpers.kafka import end_offsets, produce, read_from
from tests.helpers.kafka import read_campaign_records
from tests.peers import SmtpPeer, TwilioPeer, WebhookPeer

REPO = Path(__file__).resolve().parents[3]
SECRET = "senders-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def sender_worker(workers, peers: dict) -> subprocess.Popen:
    """The session's worker with this module's peers as its providers."""
    env = {"HERALD_SMTP_HOST": peers["smtp"].host, "HERALD_SMTP_PORT": str(peers["smtp"].port),
           "HERALD_SMS_URL": peers["sms"].url, "HERALD_PUSH_URL": peers["push"].url,
           "HERALD_SIGNING_SECRET": SECRET, "HERALD_EMAIL_PROVIDER": "smtp"}
    return workers.ensure(env, "test-sender-worker")


@pytest.fixture(scope="module")
def api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API, sharing the worker's signing secret (unsubscribe and tracked links verify)."""
    api_settings = settings.model_copy(update={"signing_secret": SECRET,
                                               "local_dir": tmp_path_factory.mktemp("senders-api")})
    with TestClient(create_app(api_settings)) as client:
        yield client


@pytest.fixture
async def cleanup(pipeline_redis):
    campaigns: list[int] = []
    yield campaigns.append
    for cid in campaigns:
        keys = [k async for k in pipeline_redis.scan_iter(f"sends:{cid}:*", count=10_000)]
        if keys:
            await pipeline_redis.delete(*keys)


# ---------------------------------------------------------------- helpers


def by_partition(settings: Settings, user_ids: list[int]) -> dict[int, list[int]]:
    parts = user_partitions(np.array(user_ids, dtype=np.int64), settings.topic_partitions)
    grouped: dict[int, list[int]] = {}
    for uid, p in zip(user_ids, parts):
        grouped.setdefault(int(p), []).append(uid)
    return grouped


def outbox_batches(settings: Settings, cid: int, channel: str, user_ids: list[int], tag: str = "b",
                   variant: str | None = None) -> list[MessageBatch]:
    return [MessageBatch(batch_id=f"test:{cid}:{tag}:{p}:{channel}", campaign_id=cid, channel=channel, partition=p,
                         recipients=[Recipient(user_id=u, variant=variant) for u in users])
            for p, users in sorted(by_partition(settings, user_ids).items())]


async def send_batches(settings: Settings, channel: str, batches: list[MessageBatch]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, acks="all")
    await producer.start()
    try:
        for b in batches:
            await producer.send_and_wait(f"outbox.{channel}", orjson.dumps(b.model_dump(mode="json")),
                                         key=b.batch_id.encode(), partition=b.partition)
    finally:
        await producer.stop()


def events_of(records: list[tuple[int, dict]], cid: int) -> list[tuple[int, dict]]:
    return [(p, e) for p, batch in records for e in batch.get("events", []) if e["campaign_id"] == cid]


async def wait_events(settings: Settings, start, cid: int, statuses: set[str], count: int, timeout_s: float = 90.0):
    def enough(records):
        return sum(1 for _, e in events_of(records, cid) if e["status"] in statuses) >= count

    return await read_campaign_records(settings, start, cid, enough, timeout_s=timeout_s)


async def dead_letters_of(settings: Settings, start, cid: int, count: int, timeout_s: float = 60.0) -> list[dict]:
    def mine(records):
        return [r for r in records if r.get("stage", "").startswith("send_")
                and orjson.loads(base64.b64decode(r["value"])).get("campaign_id") == cid]

    records = await read_from(settings.kafka_brokers, start, lambda rs: len(mine(rs)) >= count, timeout_s=timeout_s)
    return mine(records)


async def activate(redis, cid: int, status: str = "active") -> None:
    await redis.set(f"campaign:{cid}:status", status)


EMAIL_CONTENT = {"email": {
    "subject": "Hello {{ first_name }}",
    "html": '<html><body><p>Hi {{ first_name }}, see <a href="https://shop.example/sale?id={{ user_id }}">the sale</a>'
            ' or <a href="{{ unsubscribe_url }}">unsubscribe</a>.</p></body></html>',
    "text": "Hi {{ first_name }}: https://shop.example/sale",
}}


# ---------------------------------------------------------------- email over SMTP


async def test_an_email_batch_reaches_smtp_once_per_recipient_with_one_click_unsubscribe_and_tracking(
        settings, sender_worker, live, make_campaign, pipeline_redis, pipeline_pool, api, cleanup):
    campaign = await make_campaign(users=12, channels=["email"], content=EMAIL_CONTENT)
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    events_start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    batches = outbox_batches(settings, cid, "email", campaign.user_ids, variant="B")
    await send_batches(settings, "email", batches)

    records = await wait_events(settings, events_start, cid, {"sent"}, len(campaign.user_ids))
    smtp: SmtpPeer = live["smtp"]
    mails = [m for m in smtp.wait_for(len(campaign.user_ids), timeout=30)
             if m.rcpt_tos[0] in {f"u{u}@example.test" for u in campaign.user_ids}]
    assert sorted(m.rcpt_tos[0] for m in mails) == sorted(f"u{u}@example.test" for u in campaign.user_ids)

    # One event batch per input batch, on the input's partition, each user "sent" once with the variant.
    mine = [(p, b) for p, b in records if any(e["campaign_id"] == cid for e in b["events"])]
    assert sorted(p for p, _ in mine) == sorted(b.partition for b in batches)
    sent = {e["user_id"]: (p, e) for p, e in events_of(records, cid)}
    assert set(sent) == set(campaign.user_ids)
    by_user = {u: b.partition for b in batches for u in (r.user_id for r in b.recipients)}
    for uid, (p, e) in sent.items():
        assert p == by_user[uid]
        assert e["message_id"] == str(message_id(cid, uid, "email"))
        assert (e["status"], e["variant"], e["cost"]) == ("sent", "B", settings.unit_cost_email)
        assert e["provider_id"]

    mail = mails[0].message
    uid = int(mails[0].rcpt_tos[0][1:].split("@")[0])
    assert mail["Subject"] == f"Hello First{uid % 1000}"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = mail["List-Unsubscribe"].strip("<>")
    html = mail.get_body(("html",)).get_content()
    assert f'href="{unsubscribe}"' in html  # the unsubscribe link is not wrapped by tracking
    assert "https://shop.example" not in html  # ... every other link is
    click = re.search(r'href="([^"]+/t/c/[^"]+)"', html).group(1)
    pixel = re.search(r'src="([^"]+/t/o/[^"]+)"', html).group(1)

    # The tracked link redirects to the original URL and records a click; the pixel records an open.
    tracking_start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    answer = api.get(urlsplit(click).path, follow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["location"] == f"https://shop.example/sale?id={uid}"
    gif = api.get(urlsplit(pixel).path)
    assert (gif.status_code, gif.headers["content-type"]) == (200, "image/gif")
    forged = urlsplit(click).path[:-3] + ("AAA" if not click.endswith("AAA") else "BBB")
    assert api.get(forged, follow_redirects=False).status_code == 400
    tracked = await wait_events(settings, tracking_start, cid, {"opened", "clicked"}, 2, timeout_s=30)
    assert sorted((e["status"], e["user_id"], e["variant"]) for _, e in events_of(tracked, cid)) == [
        ("clicked", uid, "B"), ("opened", uid, "B")]

    # The List-Unsubscribe link works: one-click POST to the API switches email off for that user.
    response = api.post(urlsplit(unsubscribe).path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200, response.text
    enabled = await pipeline_pool.fetchval("SELECT email_enabled FROM user_preferences WHERE user_id = $1", uid)
    assert enabled is False


async def test_replaying_the_same_outbox_batches_sends_nothing_twice(
        settings, sender_worker, live, make_campaign, pipeline_redis, cleanup):
    campaign = await make_campaign(users=8, channels=["email"], content=EMAIL_CONTENT)
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    first, marker_users = campaign.user_ids[:6], campaign.user_ids[6:]
    batches = outbox_batches(settings, cid, "email", first)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await send_batches(settings, "email", batches)
    await wait_events(settings, start, cid, {"sent"}, len(first))

    again = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await send_batches(settings, "email", batches)  # the very same records, as after a crash before the commit
    await send_batches(settings, "email", outbox_batches(settings, cid, "email", marker_users, tag="marker"))
    records = await wait_events(settings, again, cid, {"sent"}, len(marker_users))
    time.sleep(1.0)  # the replayed batches were polled no later than the markers; give them a moment more
    smtp: SmtpPeer = live["smtp"]
    received = [m.rcpt_tos[0] for m in smtp.messages]
    for uid in first + marker_users:
        assert received.count(f"u{uid}@example.test") == 1, uid
    assert {e["user_id"] for _, e in events_of(records, cid)} == set(marker_users)


# ---------------------------------------------------------------- retries, permanent failures, dead letters


async def test_a_provider_answering_500_for_a_while_then_recovering_delivers_everything_once(
        settings, sender_worker, live, make_campaign, pipeline_redis, cleanup):
    campaign = await make_campaign(users=5, channels=["sms"])
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    twilio: TwilioPeer = live["sms"]
    twilio.fail_next(7, status=500)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    dead_start = await end_offsets(settings.kafka_brokers, DEAD_LETTERS.name)
    await send_batches(settings, "sms", outbox_batches(settings, cid, "sms", campaign.user_ids))
    records = await wait_events(settings, start, cid, {"sent", "failed", "bounced"}, len(campaign.user_ids))

    statuses = {e["user_id"]: e["status"] for _, e in events_of(records, cid)}
    assert statuses == dict.fromkeys(campaign.user_ids, "sent"), [e["reason"] for _, e in events_of(records, cid)]
    ok = [r.form()["To"] for r in twilio.requests]
    phones = {f"+1555{u % 10**7:07d}" for u in campaign.user_ids}
    accepted = twilio.count - 7
    assert accepted == len(campaign.user_ids)  # each phone accepted exactly once after the 7 failures
    assert phones <= set(ok)
    with pytest.raises(AssertionError):  # and nothing of this campaign was dead-lettered
        await dead_letters_of(settings, dead_start, cid, 1, timeout_s=3)


async def _lag_while(pipeline_redis, channel: str, waiting) -> list[float]:
    """``lag:{channel}`` sampled every 50 ms until ``waiting`` (a task) is done (None reads as 0)."""
    seen = []
    while not waiting.done():
        raw = await pipeline_redis.get(f"lag:{channel}")
        seen.append(float(raw) if raw else 0.0)
        await asyncio.sleep(0.05)
    await waiting
    return seen


def _one_partition_users(settings: Settings, user_ids: list[int], n: int) -> tuple[int, list[int]]:
    p, users = max(by_partition(settings, user_ids).items(), key=lambda kv: len(kv[1]))
    assert len(users) >= n
    return p, users[:n]


async def test_batches_queued_behind_a_failing_provider_say_their_channel_is_behind(
        settings, sender_worker, live, make_campaign, pipeline_redis, cleanup):
    """Every slot busy retrying and more batches waiting: ``lag:sms`` goes over the gate's target,
    then everything is sent once and the figure expires."""
    campaign = await make_campaign(users=200, channels=["sms"])
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    p, users = _one_partition_users(settings, campaign.user_ids, 3 * settings.sender_batches_in_flight)
    twilio: TwilioPeer = live["sms"]
    twilio.fail_next(3 * settings.sender_batches_in_flight, status=500)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await send_batches(settings, "sms", [MessageBatch(batch_id=f"test:{cid}:queue:{p}:{u}", campaign_id=cid,
                                                      channel="sms", partition=p, recipients=[Recipient(user_id=u)])
                                         for u in users])
    sent = asyncio.ensure_future(wait_events(settings, start, cid, {"sent"}, len(users)))
    lags = await _lag_while(pipeline_redis, "sms", sent)
    assert max(lags) > settings.gate_pace_lag_s, max(lags)
    records = await wait_events(settings, start, cid, {"sent"}, len(users))
    assert sorted(e["user_id"] for _, e in events_of(records, cid) if e["status"] == "sent") == sorted(users)
    await asyncio.sleep(1.5)
    assert await pipeline_redis.get("lag:sms") is None


async def test_a_permanent_rejection_is_a_bounce_and_a_dead_letter_that_dlq_replay_can_send_again(
        settings, sender_worker, live, make_campaign, pipeline_redis, cleanup):
    campaign = await make_campaign(users=4, channels=["email"], content=EMAIL_CONTENT)
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    smtp: SmtpPeer = live["smtp"]
    rejected = campaign.user_ids[0]
    smtp.reject(f"u{rejected}@example.test")
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    dead_start = await end_offsets(settings.kafka_brokers, DEAD_LETTERS.name)
    await send_batches(settings, "email", outbox_batches(settings, cid, "email", campaign.user_ids))
    records = await wait_events(settings, start, cid, {"sent", "bounced", "failed"}, len(campaign.user_ids))

    outcome = {e["user_id"]: e for _, e in events_of(records, cid)}
    assert outcome[rejected]["status"] == "bounced"
    assert "550" in outcome[rejected]["reason"]
    assert all(outcome[u]["status"] == "sent" for u in campaign.user_ids[1:])
    [letter] = await dead_letters_of(settings, dead_start, cid, 1)
    assert letter["stage"] == "send_email" and letter["source_topic"] == "outbox.email"
    assert "550" in letter["reason"]
    narrowed = orjson.loads(base64.b64decode(letter["value"]))
    assert [r["user_id"] for r in narrowed["recipients"]] == [rejected]

    # The address is fixed at the provider; dlq-replay sends the letter again: exactly one email arrives.
    smtp.rejected.clear()
    again = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    counts = await replay(settings, campaign_id=cid)
    assert counts["replayed"] == 1
    records = await wait_events(settings, again, cid, {"sent"}, 1)
    assert [e["user_id"] for _, e in events_of(records, cid) if e["status"] == "sent"] == [rejected]
    assert [m.rcpt_tos[0] for m in smtp.messages].count(f"u{rejected}@example.test") == 1


async def test_a_webhook_answering_400_is_a_failed_message_with_a_dead_letter(
        settings, sender_worker, live, make_campaign, pipeline_redis, cleanup):
    hook: WebhookPeer = live["webhook"]
    content = {"webhook": {"url": hook.url, "payload": {"user": "{{ user_id }}", "hello": "{{ first_name }}"}}}
    campaign = await make_campaign(users=2, channels=["webhook"], content=content)
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    [first, second] = campaign.user_ids
    hook.fail_next(1, status=400)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    dead_start = await end_offsets(settings.kafka_brokers, DEAD_LETTERS.name)
    await send_batches(settings, "webhook", [MessageBatch(batch_id=f"test:{cid}:w", campaign_id=cid,
                                                          channel="webhook", partition=0,
                                                          recipients=[Recipient(user_id=first)])])
    await wait_events(settings, start, cid, {"failed"}, 1)
    [letter] = await dead_letters_of(settings, dead_start, cid, 1)
    assert letter["reason"].startswith("400")
    await send_batches(settings, "webhook", [MessageBatch(batch_id=f"test:{cid}:w2", campaign_id=cid,
                                                          channel="webhook", partition=0,
                                                          recipients=[Recipient(user_id=second)])])
    await wait_events(settings, start, cid, {"sent"}, 1)
    body = hook.requests[-1].json()
    assert body == {"user": str(second), "hello": f"First{second % 1000}"}
    assert hook.requests[-1].headers["x-herald-message-id"] == str(message_id(cid, second, "webhook"))


# ---------------------------------------------------------------- push, in-app, campaign state


async def test_push_goes_to_every_device_and_an_all_unregistered_user_bounces(
        settings, sender_worker, live, make_campaign, pipeline_redis, pipeline_pool, cleanup):
    campaign = await make_campaign(users=2, channels=["push"])
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    [both, gone] = campaign.user_ids
    await pipeline_pool.execute("UPDATE users SET push_tokens = $2::jsonb WHERE user_id = $1", both,
                                orjson.dumps([f"dev-a-{both}", f"unregistered-{both}"]).decode())
    await pipeline_pool.execute("UPDATE users SET push_tokens = $2::jsonb WHERE user_id = $1", gone,
                                orjson.dumps([f"unregistered-{gone}"]).decode())
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await send_batches(settings, "push", outbox_batches(settings, cid, "push", campaign.user_ids))
    records = await wait_events(settings, start, cid, {"sent", "bounced", "failed"}, 2)
    outcome = {e["user_id"]: e for _, e in events_of(records, cid)}
    assert outcome[both]["status"] == "sent"
    assert (outcome[gone]["status"], "UNREGISTERED" in outcome[gone]["reason"]) == ("bounced", True)
    tokens = [r.json()["message"]["token"] for r in live["push"].requests]
    assert sorted(tokens) == sorted([f"dev-a-{both}", f"unregistered-{both}", f"unregistered-{gone}"])


async def test_in_app_messages_land_in_the_users_inbox(settings, sender_worker, make_campaign, pipeline_redis,
                                                       cleanup):
    campaign = await make_campaign(users=3, channels=["in_app"])
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await send_batches(settings, "in_app", outbox_batches(settings, cid, "in_app", campaign.user_ids))
    await wait_events(settings, start, cid, {"sent"}, 3)
    try:
        for uid in campaign.user_ids:
            [entry] = [orjson.loads(e) for e in await pipeline_redis.lrange(f"inbox:{uid}", 0, -1)]
            assert (entry["title"], entry["body"]) == ("Hello", f"Hi First{uid % 1000}")
            assert entry["message_id"] == str(message_id(cid, uid, "in_app"))
    finally:
        await pipeline_redis.delete(*[f"inbox:{u}" for u in campaign.user_ids])


async def test_a_paused_campaign_holds_its_batches_and_a_cancelled_one_sends_nothing(
        settings, sender_worker, live, make_campaign, pipeline_redis, cleanup):
    paused = await make_campaign(users=3, channels=["email"], content=EMAIL_CONTENT)
    cancelled = await make_campaign(users=3, channels=["email"], content=EMAIL_CONTENT)
    for c, status in ((paused, "paused"), (cancelled, "cancelled")):
        cleanup(c.campaign_id)
        await activate(pipeline_redis, c.campaign_id, status)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    held = outbox_batches(settings, paused.campaign_id, "email", paused.user_ids)
    await send_batches(settings, "email", held)
    await send_batches(settings, "email", outbox_batches(settings, cancelled.campaign_id, "email", cancelled.user_ids))

    records = await wait_events(settings, start, paused.campaign_id, {"held"}, 3)
    assert {e["user_id"] for _, e in events_of(records, paused.campaign_id)} == set(paused.user_ids)
    kept = [MessageBatch.model_validate_json(raw) for raw in
            await pipeline_redis.lrange(f"campaign:{paused.campaign_id}:held", 0, -1)]
    assert sorted(r.user_id for b in kept for r in b.recipients) == sorted(paused.user_ids)
    records = await wait_events(settings, start, cancelled.campaign_id, {"cancelled"}, 3)
    assert {e["user_id"] for _, e in events_of(records, cancelled.campaign_id)} == set(cancelled.user_ids)
    addresses = {f"u{u}@example.test" for u in paused.user_ids + cancelled.user_ids}
    assert not [m for m in live["smtp"].messages if m.rcpt_tos[0] in addresses]


async def test_a_malformed_outbox_record_is_dead_lettered_and_the_stream_goes_on(
        settings, sender_worker, live, make_campaign, pipeline_redis, cleanup):
    campaign = await make_campaign(users=1, channels=["email"], content=EMAIL_CONTENT)
    cid = campaign.campaign_id
    cleanup(cid)
    await activate(pipeline_redis, cid)
    dead_start = await end_offsets(settings.kafka_brokers, DEAD_LETTERS.name)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    [batch] = outbox_batches(settings, cid, "email", campaign.user_ids)
    bad = orjson.dumps({"campaign_id": cid, "recipients": "nobody", "marker": f"bad-{cid}"})
    await produce(settings.kafka_brokers, "outbox.email", [(b"bad", bad)])
    await send_batches(settings, "email", [batch])
    await wait_events(settings, start, cid, {"sent"}, 1)

    def found(records):
        return [r for r in records if r.get("stage") == "send_email"
                and f"bad-{cid}".encode() in base64.b64decode(r["value"])]

    records = await read_from(settings.kafka_brokers, dead_start, lambda rs: bool(found(rs)), timeout_s=30)
    assert "recipients" in found(records)[0]["reason"]



# ---------------------------------------------------------------- the token bucket in Redis (no worker needed)


async def test_the_redis_token_bucket_is_shared_and_never_grants_more_than_its_rate(pipeline_redis):
    import asyncio
    import secrets

    from pipeline.send.pacing import TokenBucket

    channel = f"test-{secrets.token_hex(4)}"
    workers = [TokenBucket(pipeline_redis, channel, rate=200.0) for _ in range(4)]  # four "processes", one bucket
    try:
        granted, wait = await workers[0].take(150)
        assert (granted, wait) == (150, 0.0)
        granted, wait = await workers[1].take(100)  # 50 left of the burst of 200
        assert granted == 50 and 0.2 < wait <= 0.26  # the missing 50 need ~0.25 s at 200/s

        started = time.monotonic()
        total = 0

        async def drain(bucket: TokenBucket) -> None:
            nonlocal total
            while time.monotonic() - started < 1.0:
                got = await bucket.acquire(25)
                total += got

        await asyncio.gather(*(drain(b) for b in workers))
        elapsed = time.monotonic() - started
        assert total <= 200 * elapsed + 25 * len(workers)  # the rate, whatever the number of takers
        assert total >= 200 * 0.8  # and they did get the rate
    finally:
        await pipeline_redis.delete(f"bucket:{channel}")


# ---------------------------------------------------------------- the batch email provider (adapter against its peer)


async def test_the_batch_email_provider_sends_1000_personal_emails_per_request_and_reports_failures(settings):
    from pipeline.channels import Message, SendGridBatch
    from tests.peers import SendGridPeer

    peer = SendGridPeer().start()
    adapter = SendGridBatch(settings.model_copy(update={"email_batch_url": peer.url, "email_batch_key": peer.api_key}))
    try:
        messages = [Message(channel="email", to=f"u{i}@example.test", message_id=f"m{i}",
                            parts={"subject": f"Hi {i}", "html": f"<p>{i}</p>", "text": f"{i}"},
                            headers={"List-Unsubscribe": f"<https://h/u/{i}>"}) for i in range(1200)]
        results = await adapter.send_many(messages)
        assert all(r.ok for r in results) and len({r.provider_id for r in results}) == 1200
        assert (peer.count, peer.delivered) == (2, 1200)
        bodies = sorted((r.json() for r in peer.requests), key=lambda b: -len(b["personalizations"]))
        assert [len(b["personalizations"]) for b in bodies] == [1000, 200]
        assert bodies[0]["personalizations"][7]["subject"] == "Hi 7"

        peer.fail_next(1, status=503, headers={"Retry-After": "2"})
        [busy] = await adapter.send_many(messages[:1])
        assert (busy.outcome, busy.retry_after_s) == ("transient", 2.0)
        peer.fail_next(1, status=400, body={"errors": [{"message": "bad", "field": "from.email"}]})
        [refused] = await adapter.send_many(messages[:1])
        assert refused.outcome == "permanent" and "from.email" in refused.reason
    finally:
        await adapter.aclose()
        peer.stop()

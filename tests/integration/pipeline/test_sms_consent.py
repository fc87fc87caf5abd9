"""SMS consent and quiet hours through the real gate, with the product's defaults.

The worker runs with SMS opt-in and SMS quiet hours 21:00-08:00 (the defaults, passed explicitly since
other tests' workers turn them off). Consent is given through the preferences API and withdrawn by a
signed inbound STOP (tests/peers/twilio.py) to the real API; MessageBatch records go straight to
``message-requests`` as in test_gate.py, and the gate's delivery events say what it decided.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import datetime, time as dt_time, timezone
from zoneinfo import ZoneInfo

import orjson

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.keys import bootstrap_admin_key
from schemas.encoding import encode
from schemas.keys import DEFERRED
from schemas.topics import DELIVERY_EVENTS, MESSAGE_REQUESTS, OUTBOX, PREFERENCE_UPDATES
from tests.helpers.api import bearer
from tests.helpers.kafka import end_offsets
from tests.integration.pipeline.test_gate import _batch, _consumed, _events, _one_partition, _read, _send, _starts
from tests.peers.twilio import inbound_sms

DEFAULTS = {"HERALD_GATE_OPT_IN_CHANNELS": "sms", "HERALD_GATE_CHANNEL_QUIET_HOURS": "sms=21:00-08:00"}


@pytest.fixture
def consent_worker(workers, default_providers):
    return workers.ensure({**default_providers, **DEFAULTS})


@pytest.fixture
def api(settings, tmp_path) -> Iterator[tuple[TestClient, str]]:
    local = settings.model_copy(update={"api_key_cache_s": 0, "local_dir": tmp_path})
    key = asyncio.run(bootstrap_admin_key(local))
    with TestClient(create_app(local)) as client:
        yield client, key
    import asyncpg

    async def revoke() -> None:
        from api.auth import key_digest

        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", key_digest(key))
        finally:
            await conn.close()

    asyncio.run(revoke())


def zone_at(local_hour: int, now: datetime) -> str:
    """A fixed-offset zone where it is ``local_hour`` o'clock now (Etc/GMT signs are inverted)."""
    offset = (local_hour - now.hour + 12) % 24 - 12  # -12 .. +11 hours from UTC
    return "Etc/GMT" + (f"{-offset:+d}" if offset else "")


def outcomes(records, cid: int, step: str) -> dict[int, tuple[str, str | None]]:
    return {e["user_id"]: (e["status"], e["reason"]) for e in _events(records, cid) if e["step"] == step}


async def test_sms_needs_consent_stop_reaches_the_gate_within_a_second_and_start_reenables(
        consent_worker, settings, make_campaign, pipeline_pool, pipeline_redis, api):
    client, key = api
    campaign = await make_campaign(users=60, channels=["sms"])
    cid = campaign.campaign_id
    p, (agreed, silent, sleeping) = _one_partition(campaign, settings, 3)
    now = datetime.now(timezone.utc)
    if now.minute >= 58:  # so that the zone picked below stays at its hour for the whole test
        await asyncio.sleep(121)
        now = datetime.now(timezone.utc)
    phone = f"+1999{random.randrange(10**7, 10**8)}"
    await pipeline_pool.execute("UPDATE users SET phone = $2, timezone = $3 WHERE user_id = $1", agreed, phone,
                                zone_at(13, now))
    await pipeline_pool.execute("UPDATE users SET timezone = $2 WHERE user_id = ANY($1::bigint[])", [silent],
                                zone_at(13, now))
    await pipeline_pool.execute("UPDATE users SET timezone = $2 WHERE user_id = $1", sleeping, zone_at(3, now))

    # Consent as a signup form records it, for two of the three.
    before = await end_offsets(settings.kafka_brokers, PREFERENCE_UPDATES.name)
    grant = {"consent": {"sms": {"granted": True, "source": "signup_form", "text_version": "sms-terms-v3"}}}
    for uid in (agreed, sleeping):
        response = client.patch(f"/api/v1/users/{uid}/preferences", headers=bearer(key), json=grant)
        assert response.status_code == 200, response.text
    after = await end_offsets(settings.kafka_brokers, PREFERENCE_UPDATES.name)
    for tp, end in after.items():
        if end > before.get(tp, 0):
            await _consumed(settings, PREFERENCE_UPDATES.name, tp.partition, end - 1)

    starts = await _starts(settings, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, [agreed, silent, sleeping],
                                                                          f"sms-consent:{cid}:0", "send")))
    records = await _read(settings, starts, cid, events=3)
    first = outcomes(records, cid, "send")
    assert first[agreed] == ("queued", None)
    assert first[silent] == ("suppressed", "no_consent")
    # 03:00 where they live: deferred to 08:00 there, about five hours from now
    assert first[sleeping] == ("deferred", None)
    waiting = [(orjson.loads(m), score) for m, score in await pipeline_redis.zrange(DEFERRED, 0, -1, withscores=True)]
    (batch, release), = [(b, t) for b, t in waiting if b.get("campaign_id") == cid]
    await pipeline_redis.zrem(DEFERRED, orjson.dumps(batch))  # never released: the campaign goes when the test ends
    zone = ZoneInfo(zone_at(3, now))
    assert [r["user_id"] for r in batch["recipients"]] == [sleeping] and batch["channel"] == "sms"
    assert release == datetime.combine(now.astimezone(zone).date(), dt_time(8), zone).timestamp()
    sms_batches = [r for _, r in records if r.get("campaign_id") == cid and "recipients" in r]
    assert [r["user_id"] for b in sms_batches for r in b["recipients"]] == [agreed]

    # STOP from the phone; one second later the gate refuses that user's next SMS.
    url = settings.public_url.rstrip("/") + "/callbacks/twilio/inbound"
    _, body, headers = inbound_sms(settings.sms_auth_token, url, phone, " stop ")
    answered = client.post("/callbacks/twilio/inbound", content=body, headers=headers)
    assert answered.status_code == 200 and "<Message>" in answered.text
    stopped_at = time.monotonic()
    await asyncio.sleep(1.0)
    starts = await _starts(settings, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, [agreed], f"sms-consent:{cid}:1",
                                                                          "after-stop")))
    records = await _read(settings, starts, cid, events=1)
    assert outcomes(records, cid, "after-stop") == {agreed: ("suppressed", "unsubscribed")}
    assert time.monotonic() - stopped_at < 15  # the batch was sent 1 s after the answer; this bounds the wait

    # START gives consent back (source sms_keyword): the next SMS goes out.
    _, body, headers = inbound_sms(settings.sms_auth_token, url, phone, "START")
    assert client.post("/callbacks/twilio/inbound", content=body, headers=headers).status_code == 200
    await asyncio.sleep(1.0)
    starts = await _starts(settings, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, [agreed], f"sms-consent:{cid}:2",
                                                                          "after-start")))
    records = await _read(settings, starts, cid, events=1)
    assert outcomes(records, cid, "after-start") == {agreed: ("queued", None)}
    got = client.get(f"/api/v1/users/{agreed}/preferences", headers=bearer(key)).json()
    assert (got["consent"]["sms"]["granted"], got["consent"]["sms"]["source"]) == (True, "sms_keyword")


async def test_consent_an_upstream_profile_carries_reaches_the_gate_and_a_later_stop_stands(
        consent_worker, settings, make_campaign, pipeline_pool, api):
    """A sign-up form's SMS consent arrives with the profile on user-profiles (pipeline/preferences_store.py):
    recorded with its source, time and text version, audited, and the gate sends; the same profile read
    again after a STOP does not give the consent back."""
    from schemas.records import UserProfile
    from schemas.preferences import preference_key
    from schemas.topics import USER_PROFILES

    client, key = api
    campaign = await make_campaign(users=60, channels=["sms"])
    cid = campaign.campaign_id
    p, (agreed, silent) = _one_partition(campaign, settings, 2)
    now = datetime.now(timezone.utc)
    if now.minute >= 58:
        await asyncio.sleep(121)
        now = datetime.now(timezone.utc)
    await pipeline_pool.execute("UPDATE users SET timezone = $2 WHERE user_id = ANY($1::bigint[])",
                                [agreed, silent], zone_at(13, now))
    form_at = datetime.now(timezone.utc)
    profile = UserProfile(user_id=agreed, phone=f"+1999{random.randrange(10**7, 10**8)}", timezone=zone_at(13, now),
                          consent={"sms": {"granted": True, "source": "signup_form", "text_version": "sms-terms-v4",
                                           "at": form_at}})
    before = await end_offsets(settings.kafka_brokers, PREFERENCE_UPDATES.name)
    offset = await _send(settings, USER_PROFILES.name, p, preference_key(agreed), encode(profile))
    await _consumed(settings, USER_PROFILES.name, p, offset, stage="ingest_profiles")
    after = await end_offsets(settings.kafka_brokers, PREFERENCE_UPDATES.name)
    published = [tp for tp, end in after.items() if end > before.get(tp, 0)]
    assert published  # the consent went out to the gate's preference stream
    for tp in published:
        await _consumed(settings, PREFERENCE_UPDATES.name, tp.partition, after[tp] - 1)

    got = client.get(f"/api/v1/users/{agreed}/preferences", headers=bearer(key)).json()
    assert got["consent"]["sms"]["granted"] is True and got["consent"]["sms"]["source"] == "signup_form"
    assert got["consent"]["sms"]["text_version"] == "sms-terms-v4"
    assert datetime.fromisoformat(got["consent"]["sms"]["at"]) == form_at
    audited = await pipeline_pool.fetchval("SELECT actor FROM audit_log WHERE entity_type = 'user_preferences'"
                                           " AND entity_id = $1 AND action = 'consent'", str(agreed))
    assert audited == "upstream"

    starts = await _starts(settings, OUTBOX["sms"].name, DELIVERY_EVENTS.name)
    await _send(settings, MESSAGE_REQUESTS.name, p, b"k", encode(_batch(cid, p, [agreed, silent],
                                                                          f"sms-upstream:{cid}:0", "send")))
    records = await _read(settings, starts, cid, events=2)
    assert outcomes(records, cid, "send") == {agreed: ("queued", None), silent: ("suppressed", "no_consent")}

    # STOP through the API (as the keyword records it), then the same profile again: the STOP stands.
    stop = {"consent": {"sms": {"granted": False, "source": "sms_keyword"}}}
    assert client.patch(f"/api/v1/users/{agreed}/preferences", headers=bearer(key), json=stop).status_code == 200
    offset = await _send(settings, USER_PROFILES.name, p, preference_key(agreed), encode(profile))
    await _consumed(settings, USER_PROFILES.name, p, offset, stage="ingest_profiles")
    got = client.get(f"/api/v1/users/{agreed}/preferences", headers=bearer(key)).json()
    assert got["consent"]["sms"]["granted"] is False and got["sms_enabled"] is False

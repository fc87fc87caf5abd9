"""Email and phone at rest: ingested profiles land encrypted, are found by their blind index, and still
reach the providers with the right address; unsubscribing by email works on encrypted rows."""

from __future__ import annotations

import random
import subprocess
from datetime import datetime, timezone

import orjson
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from config import Settings
from pipeline.pii import decrypt, email_index, phone_index
from pipeline.pii_keys import pii_keyring
from pipeline.signing import signing_key
from pipeline.unsubscribe import make_unsubscribe_token
from tests.helpers.kafka import eventually, produce
from tests.helpers.pipeline import DEFAULT_CONTENT, PipelineCampaign, insert_static_segment


@pytest.fixture(scope="module")
def pii_worker(workers, peers: dict) -> subprocess.Popen:
    env = {"HERALD_SMTP_HOST": peers["smtp"].host, "HERALD_SMTP_PORT": str(peers["smtp"].port),
           "HERALD_SMS_URL": peers["sms"].url, "HERALD_PUSH_URL": peers["push"].url, "HERALD_EMAIL_PROVIDER": "smtp"}
    return workers.ensure(env, "test-pii-worker")


@pytest.fixture
async def ingested(settings: Settings, pipeline_pool):
    """Three users who exist only through the user-profiles topic, as upstream sends them."""
    base = random.randrange(10**12, 9 * 10**15)
    ids = [base, base + 7, base + 14]
    contact = {u: (f"pii.{u}@Example.test", f"+1555{u % 10**7:07d}") for u in ids}
    profiles = [(str(u).encode(), orjson.dumps({"user_id": u, "email": contact[u][0], "phone": contact[u][1],
                                                 "first_name": "Ada", "language": "en", "timezone": "UTC",
                                                 "updated_at": datetime.now(timezone.utc).isoformat()}))
                for u in ids]
    await produce(settings.kafka_brokers, "user-profiles", profiles)
    yield contact
    await pipeline_pool.execute("DELETE FROM users WHERE user_id = ANY($1::bigint[])", ids)


async def _rows(pool, ids):
    rows = await pool.fetch("SELECT * FROM users WHERE user_id = ANY($1::bigint[])", list(ids))
    return rows if len(rows) == len(ids) else None


async def test_an_ingested_profile_is_stored_encrypted_and_found_by_its_blind_index(
        settings, pii_worker, ingested, pipeline_pool):
    keyring = pii_keyring(settings)
    rows = await eventually(lambda: _rows(pipeline_pool, ingested))
    for row in rows:
        email, phone = ingested[row["user_id"]]
        assert row["email"] is None and row["phone"] is None
        text = " ".join(str(v) for v in row.values())
        assert email.lower() not in text.lower() and phone[2:] not in text and "pii." not in text
        assert decrypt(keyring, "email", row["email_enc"]) == email
        assert decrypt(keyring, "phone", row["phone_enc"]) == phone
    uid = rows[0]["user_id"]
    email, phone = ingested[uid]
    # Lookups by address: the normalized, keyed index, whatever the case or formatting asked with.
    assert await pipeline_pool.fetchval("SELECT user_id FROM users WHERE email_idx = $1",
                                        email_index(keyring, f"  {email.upper()} ")) == uid
    spaced = f"{phone[:2]} ({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
    assert await pipeline_pool.fetchval("SELECT user_id FROM users WHERE phone_idx = $1",
                                        phone_index(keyring, spaced)) == uid


async def test_a_campaign_reaches_the_ingested_users_addresses(settings, pii_worker, live, ingested, pipeline_pool):
    await eventually(lambda: _rows(pipeline_pool, ingested))
    ids = sorted(ingested)
    channels = ["email", "sms"]
    async with pipeline_pool.acquire() as conn, conn.transaction():
        segment_id = await insert_static_segment(conn, ids, f"test-pii-{ids[0]}")
        content = {ch: DEFAULT_CONTENT[ch] for ch in channels}
        campaign_id = await conn.fetchval(
            "INSERT INTO campaigns (name, type, status, channels, segment_id, content, estimated_recipients)"
            " VALUES ($1, 'immediate', 'draft', $2, $3, $4::jsonb, $5) RETURNING campaign_id",
            f"test-pii-{ids[0]}", channels, segment_id, orjson.dumps(content).decode(), len(ids))
    campaign = PipelineCampaign(settings, pipeline_pool, campaign_id, segment_id, ids, channels, content, [], None,
                                dict.fromkeys(ids, "en"))
    try:
        await campaign.launch()
        mails = live["smtp"].wait_for(len(ids), timeout=60)
        assert sorted(m.rcpt_tos[0] for m in mails) == sorted(ingested[u][0] for u in ids)

        async def texts():
            to = sorted(r.form()["To"] for r in live["sms"].requests)
            return to if len(to) >= len(ids) else None
        assert await eventually(texts) == sorted(ingested[u][1] for u in ids)
    finally:
        await pipeline_pool.execute("DELETE FROM launch_audiences WHERE campaign_id = $1", campaign_id)
        await pipeline_pool.execute("DELETE FROM campaigns WHERE campaign_id = $1", campaign_id)
        await pipeline_pool.execute("DELETE FROM segments WHERE segment_id = $1", segment_id)


async def test_unsubscribe_by_email_works_on_an_encrypted_row(settings, pii_worker, ingested, pipeline_pool):
    rows = await eventually(lambda: _rows(pipeline_pool, ingested))
    uid = rows[0]["user_id"]
    email = ingested[uid][0]
    keyring = pii_keyring(settings)
    with TestClient(create_app(settings)) as client:
        token = make_unsubscribe_token(signing_key(settings), uid, "email", 42)
        wrong = client.post("/api/v1/unsubscribe", json={"token": token, "email": "someone@else.test"})
        assert wrong.status_code == 403 and wrong.json()["error"]["fields"][0]["field"] == "email", wrong.text
        ok = client.post("/api/v1/unsubscribe", json={"token": token, "email": email.upper()})
        assert ok.status_code == 200, ok.text
    unsub = await pipeline_pool.fetchrow("SELECT * FROM unsubscribes WHERE user_id = $1", uid)
    assert unsub["email"] is None and unsub["email_idx"] == email_index(keyring, email)
    assert decrypt(keyring, "email", unsub["email_enc"]) == email
    assert await pipeline_pool.fetchval("SELECT user_id FROM unsubscribes WHERE email_idx = $1",
                                        email_index(keyring, email)) == uid
    await pipeline_pool.execute("DELETE FROM unsubscribes WHERE user_id = $1", uid)

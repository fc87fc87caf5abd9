"""Provider callbacks end to end: a campaign over the SendGrid- and Twilio-shaped peers, which call back to a real
API server (uvicorn) with signed delivery and engagement events, as the providers do; the live counters move,
duplicates and forgeries count nowhere, and bounced and complaining recipients are suppressed afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import orjson
import pytest

from api.app import create_app
from config import Settings
from pipeline.callbacks import callback_args
from schemas import keys
from schemas.messages import message_id
from tests.helpers.api import new_key, serve
from tests.helpers.pipeline import PipelineCampaign, set_contact
from tests.peers import SendGridPeer, TwilioPeer
from tests.peers.callbacks import sendgrid_signer


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[tuple[str, object]]:
    app = create_app(settings.model_copy(update={"api_key_cache_s": 0}))
    url, stop = serve(app, "callbacks-api")
    # Twilio signs the StatusCallback URL it was given: the public URL, which is this server's.
    app.state.settings = app.state.settings.model_copy(update={"public_url": url})
    yield url, app
    stop()


@pytest.fixture(scope="module")
def calling_peers(server) -> Iterator[tuple[SendGridPeer, TwilioPeer]]:
    url, _ = server
    email = SendGridPeer(events_url=f"{url}/callbacks/sendgrid/events").start()
    sms = TwilioPeer(callbacks=True).start()
    yield email, sms
    email.stop()
    sms.stop()


@pytest.fixture
def calling_worker(workers, default_providers, server, calling_peers):
    email, sms = calling_peers
    return workers.ensure({**default_providers, "HERALD_EMAIL_PROVIDER": "batch", "HERALD_EMAIL_BATCH_URL": email.url,
                           "HERALD_EMAIL_BATCH_KEY": email.api_key, "HERALD_SMS_URL": sms.url,
                           "HERALD_PUBLIC_URL": server[0]}, "callbacks-worker")


async def _totals(redis, cid: int, suffix: str = "") -> dict[str, float]:
    key = keys.metrics_key(cid) + suffix
    return {k.decode(): float(v) for k, v in (await redis.hgetall(key)).items()}


async def _until(redis, cid: int, want: dict[str, float], timeout_s: float = 60.0, suffix: str = "") -> dict:
    deadline = time.monotonic() + timeout_s
    got: dict = {}
    while time.monotonic() < deadline:
        got = await _totals(redis, cid, suffix)
        if all(got.get(k, 0) == v for k, v in want.items()):
            return got
        await asyncio.sleep(0.25)
    raise AssertionError(f"campaign {cid}{suffix}: wanted {want}, have {got}")


def _analytics(url: str, key: str, campaign_id: int, status: int = 200, **params) -> dict:
    response = httpx.get(f"{url}/api/v1/campaigns/{campaign_id}/analytics", params=params,
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == status, response.text
    return response.json()


def _signed_post(url: str, items: list[dict], stamp_shift: int = 0, tamper: bool = False) -> httpx.Response:
    body = orjson.dumps(items)
    headers = sendgrid_signer()(body)
    if stamp_shift:
        headers = sendgrid_signer()(body)
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = str(int(time.time()) + stamp_shift)
    if tamper:
        body = body.replace(b'"open"', b'"click"')
    return httpx.post(f"{url}/callbacks/sendgrid/events", content=body, headers=headers, timeout=10)


async def test_callbacks_count_delivery_bounces_opens_clicks_and_complaints_once_and_suppress(
        make_campaign, pipeline_pool, pipeline_redis, calling_worker, calling_peers, server, settings):
    url, _ = server
    email_peer, _ = calling_peers
    email_peer.reset()
    c = await make_campaign(users=12, channels=("email", "sms"), variants=[("A", 50.0), ("B", 50.0)])
    u = c.user_ids
    fates = {u[0]: "bounce", u[1]: "bounce", u[2]: "complain", u[3]: "opener", u[4]: "opener", u[5]: "clicker",
             u[6]: "machine"}
    for uid, what in fates.items():
        await set_contact(pipeline_pool, uid, email=f"{what}-{uid}@example.test")
    await set_contact(pipeline_pool, u[7], phone="+15551230003")  # unreachable
    await c.launch()

    want_email = {"sent": 12, "delivered": 10, "bounced": 2, "opened": 3, "clicked": 1, "machine_opened": 1,
                  "complained": 1}
    await _until(pipeline_redis, c.campaign_id, want_email, suffix=":email")
    await _until(pipeline_redis, c.campaign_id, {"sent": 12, "delivered": 11, "bounced": 1}, suffix=":sms")

    # A provider's retry of events already counted, twice: nothing moves.
    opener = u[3]
    args = callback_args(str(message_id(c.campaign_id, opener, "email")), c.campaign_id, opener, "email")
    again = [{"event": "delivered", "sg_event_id": "dup-1", "timestamp": int(time.time()), **args},
             {"event": "open", "sg_event_id": "dup-2", "useragent": "Mozilla/5.0 (Windows NT 10.0)", "ip": "198.51.100.1",
              "timestamp": int(time.time()), **args}]
    for _ in range(2):
        response = _signed_post(url, again)
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": 2, "skipped": {}}

    # Forged, tampered or replayed later: refused, counted nowhere.
    plain = u[10]
    forged_args = callback_args(str(message_id(c.campaign_id, plain, "email")), c.campaign_id, plain, "email")
    forged = [{"event": "open", "sg_event_id": "forged-1", "useragent": "Mozilla/5.0 (Windows)", "ip": "198.51.100.2",
               "timestamp": int(time.time()), **forged_args}]
    assert _signed_post(url, forged, tamper=True).status_code == 403
    assert _signed_post(url, forged, stamp_shift=-3600).status_code == 403
    unsigned = httpx.post(f"{url}/callbacks/sendgrid/events", content=orjson.dumps(forged), timeout=10)
    assert unsigned.status_code == 403 and unsigned.json()["error"]["code"] == "invalid_signature"
    twilio_forged = httpx.post(f"{url}/callbacks/twilio/status?" + httpx.QueryParams(forged_args | {"herald_ch": "sms"}).__str__(),
                               data={"MessageSid": "SMx", "MessageStatus": "delivered"},
                               headers={"X-Twilio-Signature": "AAAA"}, timeout=10)
    assert twilio_forged.status_code == 403

    await asyncio.sleep(3.0)  # anything wrongly published would be folded by now
    email = await _totals(pipeline_redis, c.campaign_id, ":email")
    assert {k: email.get(k, 0) for k in want_email} == want_email

    # The analytics API: the spec's formulas over these counts, live and by hour and minute, which agree.
    key = await new_key(settings)
    whole = _analytics(url, key, c.campaign_id)
    assert {k: whole["metrics"][k] for k in ("sent", "delivered", "bounced", "opened", "machine_opened", "clicked",
                                             "complained")} == \
        {"sent": 24, "delivered": 21, "bounced": 3, "opened": 3, "machine_opened": 1, "clicked": 1, "complained": 1}
    assert whole["rates"]["delivery_rate"] == 87.5 and whole["rates"]["open_rate"] == round(100 * 3 / 21, 2)
    assert whole["rates"]["click_to_open_rate"] == round(100 / 3, 2)
    assert _analytics(url, key, c.campaign_id, opens="all")["rates"]["open_rate"] == round(100 * 4 / 21, 2)
    assert whole["channel_breakdown"]["email"]["metrics"]["delivered"] == 10
    assert whole["channel_breakdown"]["sms"]["metrics"]["bounced"] == 1
    # Per variant, computed by hand from who got which variant (as the provider saw it) and each one's fate.
    variant_of = {int(p["custom_args"]["herald_uid"]): p["custom_args"]["herald_var"]
                  for r in email_peer.requests for p in r.json()["personalizations"]
                  if p["custom_args"].get("herald_cid") == str(c.campaign_id)}
    assert set(variant_of) == set(u) and set(variant_of.values()) <= {"A", "B"}
    for variant in sorted(set(variant_of.values())):
        mine = [x for x in u if variant_of[x] == variant]
        fate = [fates.get(x) for x in mine]
        want = {"sent": 2 * len(mine),
                "bounced": fate.count("bounce") + (u[7] in mine),
                "opened": fate.count("opener") + fate.count("clicker"),
                "machine_opened": fate.count("machine"), "clicked": fate.count("clicker"),
                "complained": fate.count("complain")}
        want["delivered"] = want["sent"] - want["bounced"]
        got = whole["variant_breakdown"][variant]
        assert {k: got["metrics"][k] for k in want} == want, variant
        assert got["rates"]["delivery_rate"] == round(100 * want["delivered"] / want["sent"], 2)
        assert got["rates"]["open_rate"] == (round(100 * want["opened"] / want["delivered"], 2)
                                             if want["delivered"] else None)
    today = datetime.now(timezone.utc).date().isoformat()
    for interval in ("minute", "hour", "day"):
        ranged = _analytics(url, key, c.campaign_id, start_date=today, end_date=today, interval=interval)
        assert ranged["metrics"] == whole["metrics"], interval
        points = ranged["series"]["points"]
        assert sum(p["metrics"]["delivered"] for p in points) == 21, interval
    assert _analytics(url, key, 9_000_000_000_000, status=404)["error"]["code"] == "not_found"
    reversed_range = _analytics(url, key, c.campaign_id, start_date=today, end_date="2020-01-01", status=422)
    assert reversed_range["error"]["fields"][0]["field"] == "end_date"
    assert _analytics(url, key, c.campaign_id, interval="fortnight", status=422)["error"]["fields"][0]["field"] == \
        "interval"

    # The bounced and complaining recipients are on the suppression list for the next campaign.
    cid2 = await pipeline_pool.fetchval(
        "INSERT INTO campaigns (name, type, status, channels, segment_id, content, ab_test_config, budget,"
        " estimated_recipients) VALUES ($1, 'immediate', 'draft', $2, $3, $4::jsonb, '{}'::jsonb, '{}'::jsonb, $5)"
        " RETURNING campaign_id", f"test-callbacks-{c.campaign_id}", c.channels, c.segment_id,
        orjson.dumps(c.content).decode(), len(u))
    again_c = PipelineCampaign(settings, pipeline_pool, cid2, c.segment_id, u, c.channels, c.content, [], None,
                               c.languages)
    try:
        await again_c.launch()
        second = await _until(pipeline_redis, cid2, {"sent": 9, "suppressed": 3}, suffix=":email")
        assert second.get("suppressed:suppression_list") == 3, second
        await _until(pipeline_redis, cid2, {"sent": 11, "suppressed": 1}, suffix=":sms")
    finally:
        await pipeline_pool.execute("DELETE FROM launch_audiences WHERE campaign_id = $1", cid2)
        await pipeline_pool.execute("DELETE FROM campaigns WHERE campaign_id = $1", cid2)
        found = [k async for k in pipeline_redis.scan_iter(keys.campaign_pattern(cid2), count=10_000)]
        if found:
            await pipeline_redis.delete(*found)


def test_callbacks_refuse_bad_bodies_with_the_error_shape(server):
    url, _ = server
    too_big = httpx.post(f"{url}/callbacks/sendgrid/events", content=b"[" + b" " * (5 * 2**20) + b"]", timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
    not_form = httpx.post(f"{url}/callbacks/twilio/status", json={"MessageStatus": "delivered"}, timeout=10)
    assert not_form.status_code == 415
    signed_object = _signed_post(url, {"event": "delivered"})  # type: ignore[arg-type]
    assert signed_object.status_code == 422 and "array" in signed_object.json()["error"]["message"]

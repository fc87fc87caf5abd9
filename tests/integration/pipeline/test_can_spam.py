"""CAN-SPAM and RFC 8058 on the real stack: every campaign email, over SMTP and through the SendGrid-shaped
batch provider, carries the configured postal address in its text and HTML and the one-click
``List-Unsubscribe`` headers (with the mailto link when one is configured), and POSTing the header's URL
the way a mail client does (``List-Unsubscribe=One-Click``) unsubscribes the person.

Each test runs the session's worker with its own providers (``workers.ensure``), so run alone."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from config import Settings
from schemas.topics import DELIVERY_EVENTS
from tests.helpers.kafka import end_offsets
from tests.integration.pipeline.test_senders import activate, outbox_batches, send_batches, wait_events
from tests.peers import SendGridPeer, SmtpPeer

SECRET = "can-spam-test-secret-0123456789abcdef"
ADDRESS = f"Acme Widgets {secrets.token_hex(3)}, 12 Harbour Road, Portland, ME 04101, USA"
MAILTO = "unsubscribe@herald.example"
CONTENT = {"email": {"subject": "Sale for {{ first_name }}",
                     "html": "<html><body><p>Hi {{ first_name }}, our sale is on.</p></body></html>",
                     "text": "Hi {{ first_name }}, our sale is on."}}


@pytest.fixture(scope="module")
def api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    api_settings = settings.model_copy(update={"signing_secret": SECRET,
                                               "local_dir": tmp_path_factory.mktemp("can-spam-api")})
    with TestClient(create_app(api_settings)) as client:
        yield client


def _env(**providers: str) -> dict[str, str]:
    return {"HERALD_SIGNING_SECRET": SECRET, "HERALD_SENDER_POSTAL_ADDRESS": ADDRESS,
            "HERALD_LIST_UNSUBSCRIBE_MAILTO": MAILTO, **providers}


def _check_compliant(text: str, html: str, list_unsubscribe: str, one_click: str) -> str:
    """The address in both parts, an unsubscribe link in both, the RFC 8058 headers; returns the https URL."""
    assert one_click == "List-Unsubscribe=One-Click"
    https, mailto = [link.strip().strip("<>") for link in list_unsubscribe.split(",")]
    assert https.startswith("http") and "/u/" in https
    assert mailto.startswith(f"mailto:{MAILTO}?subject=unsubscribe%20")
    assert ADDRESS in text and f"Unsubscribe: {https}" in text
    assert ADDRESS in html and f'href="{https}"' in html  # the footer's link is not wrapped by tracking
    return https


async def _unsubscribes(api: TestClient, pool, url: str, user_id: int) -> None:
    answer = api.post(urlsplit(url).path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200, answer.text
    assert await pool.fetchval("SELECT email_enabled FROM user_preferences WHERE user_id = $1", user_id) is False


async def test_smtp_email_carries_the_postal_address_and_one_click_unsubscribe_that_works(
        settings, workers, peers, live, make_campaign, pipeline_redis, pipeline_pool, api):
    smtp: SmtpPeer = live["smtp"]
    workers.ensure(_env(HERALD_SMTP_HOST=smtp.host, HERALD_SMTP_PORT=str(smtp.port), HERALD_EMAIL_PROVIDER="smtp",
                        HERALD_SMS_URL=peers["sms"].url, HERALD_PUSH_URL=peers["push"].url), "can-spam-smtp-worker")
    campaign = await make_campaign(users=3, channels=["email"], content=CONTENT)
    await activate(pipeline_redis, campaign.campaign_id)
    start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
    await send_batches(settings, "email", outbox_batches(settings, campaign.campaign_id, "email", campaign.user_ids))
    await wait_events(settings, start, campaign.campaign_id, {"sent"}, len(campaign.user_ids))

    ours = {f"u{u}@example.test": u for u in campaign.user_ids}
    mails = [m for m in smtp.wait_for(len(ours), timeout=30) if m.rcpt_tos[0] in ours]
    assert len(mails) == len(ours)
    for mail in mails:
        message = mail.message
        url = _check_compliant(message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content(),
                               message["List-Unsubscribe"], message["List-Unsubscribe-Post"])
    await _unsubscribes(api, pipeline_pool, url, ours[mails[-1].rcpt_tos[0]])


async def test_batch_provider_email_carries_the_postal_address_and_one_click_unsubscribe_that_works(
        settings, workers, peers, make_campaign, pipeline_redis, pipeline_pool, api):
    peer = SendGridPeer().start()
    try:
        workers.ensure(_env(HERALD_EMAIL_PROVIDER="batch", HERALD_EMAIL_BATCH_URL=peer.url,
                            HERALD_EMAIL_BATCH_KEY=peer.api_key, HERALD_SMS_URL=peers["sms"].url,
                            HERALD_PUSH_URL=peers["push"].url), "can-spam-batch-worker")
        campaign = await make_campaign(users=3, channels=["email"], content=CONTENT)
        await activate(pipeline_redis, campaign.campaign_id)
        start = await end_offsets(settings.kafka_brokers, DELIVERY_EVENTS.name)
        await send_batches(settings, "email", outbox_batches(settings, campaign.campaign_id, "email",
                                                             campaign.user_ids))
        await wait_events(settings, start, campaign.campaign_id, {"sent"}, len(campaign.user_ids))

        ours = {f"u{u}@example.test": u for u in campaign.user_ids}
        found = []
        for request in peer.requests:
            body = request.json()
            for p in body["personalizations"]:
                if p["to"][0]["email"] in ours:
                    found.append((p, body["content"]))
        assert len(found) == len(ours)
        for personalization, content in found:
            # The shared content is two placeholders; each personalization fills them with its own parts.
            filled = {c["type"]: personalization["substitutions"].get(c["value"], c["value"]) for c in content}
            headers = personalization["headers"]
            url = _check_compliant(filled["text/plain"], filled["text/html"], headers["List-Unsubscribe"],
                                   headers["List-Unsubscribe-Post"])
        await _unsubscribes(api, pipeline_pool, url, ours[found[-1][0]["to"][0]["email"]])
    finally:
        peer.stop()

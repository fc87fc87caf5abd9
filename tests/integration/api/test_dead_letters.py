"""POST /api/v1/dead-letters/replay against the real API and Kafka."""

from __future__ import annotations

import base64
import secrets

import orjson

from schemas.messages import MessageBatch, Recipient
from schemas.records import DeadLetter
from tests.helpers.api import assert_error, bearer
from tests.helpers.kafka import end_offsets, produce, read_from

PARTITION = 3


def _dead_letter(campaign_id: int, batch_id: str) -> bytes:
    batch = MessageBatch(batch_id=batch_id, campaign_id=campaign_id, channel="email", partition=PARTITION,
                         recipients=[Recipient(user_id=10**12 + campaign_id)])
    letter = DeadLetter(source_topic="outbox.email", partition=PARTITION, offset=0, stage="send_email",
                        reason="permanent: 550 mailbox unavailable",
                        value=base64.b64encode(orjson.dumps(batch.model_dump(mode="json"))).decode())
    return letter.model_dump_json().encode()


async def test_replay_puts_a_campaigns_dead_lettered_batch_back_on_its_outbox_once_per_call(
    client, admin_key, api_settings
):
    campaign_id = 10**9 + secrets.randbelow(10**9)
    batch_id = f"dlq-test:{campaign_id}"
    brokers = api_settings.kafka_brokers
    await produce(brokers, "dead-letters", [(str(campaign_id).encode(), _dead_letter(campaign_id, batch_id))])

    dry = client.post("/api/v1/dead-letters/replay", headers=bearer(admin_key),
                      json={"campaign_id": campaign_id, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["replayed"] == 1 and dry.json()["dry_run"] is True

    before = await end_offsets(brokers, "outbox.email")
    done = client.post("/api/v1/dead-letters/replay", headers=bearer(admin_key), json={"campaign_id": campaign_id})
    assert done.status_code == 200, done.text
    assert done.json()["replayed"] == 1

    ours = lambda records: [r for r in records if r.get("batch_id") == batch_id]  # noqa: E731
    records = await read_from(brokers, before, until=lambda rs: bool(ours(rs)), timeout_s=20)
    (replayed,) = ours(records)
    assert replayed["attempt"] == 1
    assert [r["user_id"] for r in replayed["recipients"]] == [10**12 + campaign_id]
    after = await end_offsets(brokers, "outbox.email")
    # Only our partition grew by our record, apart from what the rest of the suite sends meanwhile.
    assert after[next(tp for tp in after if tp.partition == PARTITION)] > before[
        next(tp for tp in before if tp.partition == PARTITION)]


def test_replay_is_for_admins_and_validates_its_body(client, issue_key, admin_key):
    marketer = issue_key("marketer")["key"]
    assert_error(client.post("/api/v1/dead-letters/replay", headers=bearer(marketer), json={}), 403, "forbidden")
    error = assert_error(client.post("/api/v1/dead-letters/replay", headers=bearer(admin_key),
                                     json={"campaign_id": -4}), 422, "validation_error")
    assert error["fields"][0]["field"] == "campaign_id"
    error = assert_error(client.post("/api/v1/dead-letters/replay", headers=bearer(admin_key),
                                     json={"everything": True}), 422, "validation_error")
    assert error["fields"][0]["field"] == "everything"

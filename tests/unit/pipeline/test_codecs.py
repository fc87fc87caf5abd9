import base64

import orjson
import pytest

from pipeline.codecs import RawRecord, decode_batch
from schemas.records import UserEvent, UserProfile


def raw(value: bytes, offset: int = 0, key: bytes | None = b"1") -> RawRecord:
    return RawRecord("user-profiles", 3, offset, key, value)


def test_valid_profiles_decode_in_order_with_their_sources():
    raws = [raw(orjson.dumps({"user_id": i, "country": "de"}), offset=i) for i in (1, 2, 3)]
    decoded = decode_batch(raws, UserProfile, "ingest_profiles")
    assert [p.user_id for p in decoded.records] == [1, 2, 3]
    assert [s.offset for s in decoded.sources] == [1, 2, 3]
    assert decoded.records[0].country == "DE"
    assert decoded.dead == []


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"", "empty value"),
        (b"{oops", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"user_id": -5}', "user_id: Input should be greater than 0"),
        (b'{"user_id": 5, "phone": "12345"}', "phone: not an E.164 phone number"),
        (b'{"user_id": 5, "timezone": "Mars/Base"}', "timezone: not an IANA time zone"),
        (b'{"user_id": 5, "favourite": "blue"}', "favourite: Extra inputs are not permitted"),
    ],
)
def test_a_bad_record_becomes_a_dead_letter_naming_the_reason(value, reason):
    decoded = decode_batch([raw(value, offset=42)], UserProfile, "ingest_profiles")
    assert decoded.records == []
    [letter] = decoded.dead
    assert reason in letter.reason
    assert (letter.source_topic, letter.partition, letter.offset, letter.stage) == ("user-profiles", 3, 42, "ingest_profiles")
    assert base64.b64decode(letter.value) == value
    assert base64.b64decode(letter.key) == b"1"


def test_good_records_around_a_bad_one_are_kept():
    raws = [raw(b'{"user_id": 1}', 0), raw(b"nope", 1), raw(b'{"user_id": 2}', 2)]
    decoded = decode_batch(raws, UserProfile, "s")
    assert [p.user_id for p in decoded.records] == [1, 2]
    assert [d.offset for d in decoded.dead] == [1]


def test_event_without_id_gets_the_same_stable_id_on_replay():
    body = orjson.dumps({"user_id": 9, "name": "product_viewed", "occurred_at": "2026-11-01T10:00:00"})
    first = decode_batch([raw(body)], UserEvent, "s").records[0]
    second = decode_batch([raw(body)], UserEvent, "s").records[0]
    assert first.stable_id() == second.stable_id()
    assert first.occurred_at.tzinfo is not None


def test_event_names_must_be_lower_case_words():
    body = orjson.dumps({"user_id": 9, "name": "Product Viewed!", "occurred_at": "2026-11-01T10:00:00Z"})
    [letter] = decode_batch([raw(body)], UserEvent, "s").dead
    assert letter.reason.startswith("name: event names are lower-case words")


@pytest.mark.parametrize(
    "batch, reason",
    [
        ({"recipients": [{"user_id": 2**63}]}, "recipients.0.user_id: Input should be less than or equal to 9223372036854775807"),
        ({"recipients": [{"user_id": 0}]}, "recipients.0.user_id: Input should be greater than 0"),
        ({"campaign_id": 2**63, "recipients": []}, "campaign_id: Input should be less than or equal to 9223372036854775807"),
    ],
)
def test_a_message_batch_with_ids_out_of_bigint_range_is_a_dead_letter(batch, reason):
    """Ids that PostgreSQL cannot hold are refused at the door, not by a query halfway through the gate."""
    from schemas.messages import MessageBatch

    value = orjson.dumps({"batch_id": "b", "campaign_id": 1, "partition": 0} | batch)
    decoded = decode_batch([RawRecord("message-requests", 0, 7, None, value)], MessageBatch, "gate")
    assert decoded.records == []
    assert reason in decoded.dead[0].reason

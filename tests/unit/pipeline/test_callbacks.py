"""pipeline.callbacks and pipeline.engagement: provider callbacks verified and read as delivery events."""

from __future__ import annotations

import base64
import time
import uuid

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pipeline import callbacks as cb
from pipeline.engagement import machine_open

MID = uuid.uuid4()
ARGS = cb.callback_args(str(MID), 42, 7001, "email", "B", "send")


def _keys():
    private = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    return private, cb.sendgrid_public_key(public.decode())


def _sign(private, timestamp: str, payload: bytes) -> str:
    return base64.b64encode(private.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))).decode()


def test_a_sendgrid_post_verifies_only_with_its_signature_body_and_a_recent_timestamp():
    private, key = _keys()
    now = time.time()
    stamp = str(int(now))
    payload = orjson.dumps([{"event": "delivered", **ARGS}])
    signature = _sign(private, stamp, payload)
    cb.verify_sendgrid(key, signature, stamp, payload, now)
    with pytest.raises(cb.CallbackRefused, match="does not match"):
        cb.verify_sendgrid(key, signature, stamp, payload.replace(b"delivered", b"bounce"), now)
    with pytest.raises(cb.CallbackRefused, match="does not match"):
        cb.verify_sendgrid(key, signature, str(int(now) - 1), payload, now)
    with pytest.raises(cb.CallbackRefused, match="from now"):
        cb.verify_sendgrid(key, _sign(private, str(int(now) - 900), payload), str(int(now) - 900), payload, now)
    with pytest.raises(cb.CallbackRefused, match="required"):
        cb.verify_sendgrid(key, None, stamp, payload, now)
    with pytest.raises(cb.CallbackRefused, match="malformed"):
        cb.verify_sendgrid(key, "not base64!!", stamp, payload, now)
    other, _ = _keys()
    with pytest.raises(cb.CallbackRefused):
        cb.verify_sendgrid(key, _sign(other, stamp, payload), stamp, payload, now)


def test_sendgrid_events_become_delivery_events_of_the_message_herald_named():
    now = time.time()
    items = [
        {"event": "delivered", "sg_event_id": "e1", "sg_message_id": "m.0", "timestamp": 1_700_000_000, **ARGS},
        {"event": "bounce", "type": "bounce", "reason": "550 no such user", "sg_event_id": "e2", **ARGS},
        {"event": "bounce", "type": "blocked", "reason": "421 try later", "sg_event_id": "e3", **ARGS},
        {"event": "spamreport", "sg_event_id": "e4", **ARGS},
        {"event": "open", "useragent": "Mozilla/5.0 (Windows NT 10.0) Thunderbird/115", "ip": "203.0.113.9",
         "sg_event_id": "e5", **ARGS},
        {"event": "open", "sg_machine_open": True, "useragent": "Mozilla/5.0", "ip": "17.58.1.2", "sg_event_id": "e6",
         **ARGS},
        {"event": "click", "url": "https://shop.example/x", "sg_event_id": "e7", **ARGS},
        {"event": "dropped", "reason": "Invalid", "sg_event_id": "e8", **ARGS},
        {"event": "processed", "sg_event_id": "e9", **ARGS},
        {"event": "delivered", "sg_event_id": "e10"},  # a test send: not Herald's pipeline
        {"event": "delivered", "sg_event_id": "e11", **ARGS, cb.ARG_USER: "99999999999999999999999"},
        {"event": "levitated", **ARGS},
        "not an object",
    ]
    read = cb.read_sendgrid(items, now)
    got = [(e.status, e.reason, e.event_id, e.machine) for e in read.events]
    assert got == [
        ("delivered", None, "e1", False),
        ("bounced", "550 no such user", "e2", False),
        ("failed", "blocked: 421 try later", "e3", False),
        ("complained", "complaint", "e4", False),
        ("opened", None, "e5", False),
        ("opened", None, "e6", True),
        ("clicked", "https://shop.example/x", "e7", False),
        ("failed", "dropped: Invalid", "e8", False),
    ]
    first = read.events[0]
    assert (first.message_id, first.campaign_id, first.user_id, first.channel, first.variant, first.step) == \
        (MID, 42, 7001, "email", "B", "send")
    assert first.at.timestamp() == 1_700_000_000 and first.provider_id == "m.0"
    assert read.skipped == {"not_counted:processed": 1, "not_herald": 2, "unknown_event": 1, "not_an_object": 1}
    with pytest.raises(ValueError, match="array"):
        cb.read_sendgrid({"event": "delivered"}, now)
    with pytest.raises(ValueError, match="at most"):
        cb.read_sendgrid([{}] * (cb.MAX_EVENTS + 1), now)


def test_a_twilio_signature_covers_the_url_with_its_query_and_every_parameter():
    url = "https://herald.example/callbacks/twilio/status?" + "&".join(f"{k}={v}" for k, v in ARGS.items())
    params = [("MessageSid", "SM1"), ("MessageStatus", "delivered"), ("AccountSid", "AC1")]
    signature = cb.twilio_signature("secret", url, params)
    cb.verify_twilio("secret", url, params, signature)
    for bad_url, bad_params, token in [
        (url.replace("7001", "7002"), params, "secret"),
        (url, [("MessageSid", "SM1"), ("MessageStatus", "failed"), ("AccountSid", "AC1")], "secret"),
        (url, params, "other"),
    ]:
        with pytest.raises(cb.CallbackRefused):
            cb.verify_twilio(token, bad_url, bad_params, signature)
    with pytest.raises(cb.CallbackRefused, match="required"):
        cb.verify_twilio("secret", url, params, "")


def test_twilio_statuses_map_to_herald_statuses_and_bad_numbers_bounce():
    now = time.time()
    sms = {**ARGS, cb.ARG_CHANNEL: "sms"}

    def one(form):
        read = cb.read_twilio(form, sms, now)
        return (read.events[0].status, read.events[0].reason, read.events[0].event_id) if read.events else read.skipped

    assert one({"MessageSid": "SM1", "MessageStatus": "delivered"}) == ("delivered", None, "SM1:delivered")
    assert one({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"})[0] == "bounced"
    assert one({"MessageSid": "SM1", "MessageStatus": "failed", "ErrorCode": "21610"})[1].startswith("permanent")
    assert one({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30008"}) == \
        ("failed", "twilio undelivered 30008", "SM1:undelivered")
    assert one({"MessageSid": "SM1", "MessageStatus": "sent"}) == {"not_counted:sent": 1}
    assert one({"MessageSid": "SM1", "MessageStatus": "exploded"}) == {"unknown_event": 1}
    assert cb.read_twilio({"MessageStatus": "delivered"}, {}, now).skipped == {"not_herald": 1}


def test_machine_opens_are_told_from_peoples():
    assert not machine_open("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15", "198.51.100.7")
    assert not machine_open("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
                            "66.249.84.1")  # Gmail fetches when the person opens
    assert machine_open("Mozilla/5.0", "198.51.100.7")  # Apple's proxy says no more than this
    assert machine_open("Mozilla/5.0 (Windows)", "17.58.63.10")  # Apple's range
    assert machine_open("Mozilla/5.0 (compatible; Barracuda Sentinel)", "198.51.100.7")
    assert machine_open("python-requests/2.32", "198.51.100.7")
    assert machine_open("Mozilla/5.0 (Windows)", "198.51.100.7", provider_flag=True)
    assert machine_open("Mozilla/5.0 (Windows)", "198.51.100.7", since_sent_s=0.8)
    assert not machine_open("Mozilla/5.0 (Windows)", "198.51.100.7", since_sent_s=45.0)
    assert not machine_open("Mozilla/5.0 (Windows)", "not an address")


def test_callback_args_are_empty_for_a_message_outside_the_pipeline():
    assert cb.callback_args("x", None, None, "email") == {}
    assert cb.message_ref(cb.callback_args(str(MID), 1, 2, "sms")).variant is None

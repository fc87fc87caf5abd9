"""The open pixel tells people's opens from machines': a scanner's user agent, or an open within seconds of the
message being rendered (version 2 pixel tokens carry that time), is published with ``machine`` set."""

from __future__ import annotations

import time
import uuid

from pipeline.channels.tracking import link_key, make_token
from pipeline.signing import signing_key
from schemas.topics import DELIVERY_EVENTS
from tests.helpers.kafka import end_offsets, read

DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36"


async def test_the_pixel_flags_prefetches_and_scanners_as_machine_opens(client, api_settings):
    key = link_key(signing_key(api_settings))
    campaign = 8_000_000_000_000 + int(time.time())
    now = int(time.time())
    cases = {  # user -> (rendered at, user agent, machine?)
        1: (now, DESKTOP, True),  # opened the second it was sent: a prefetch
        2: (now - 3600, DESKTOP, False),  # a person, an hour later
        3: (now - 3600, "Mozilla/5.0 (compatible; Barracuda Sentinel)", True),  # a security scanner
        4: (None, DESKTOP, False),  # an email sent before pixel tokens carried the time
    }
    start = await end_offsets(api_settings.kafka_brokers, DELIVERY_EVENTS.name)
    for user, (issued, agent, _) in cases.items():
        token = make_token(key, uuid.uuid4(), campaign, user, "A", issued_at=issued)
        answer = client.get(f"/t/o/{token}", headers={"User-Agent": agent})
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/gif"

    def mine(record) -> bool:
        return isinstance(record.value, dict) and any(e.get("campaign_id") == campaign
                                                      for e in record.value.get("events", []))

    records = await read(api_settings.kafka_brokers, start, keep=mine, until=lambda kept: len(kept) >= len(cases))
    got = {e["user_id"]: (e["status"], e["machine"]) for r in records for e in r.value["events"]}
    assert got == {user: ("opened", machine) for user, (_, _, machine) in cases.items()}

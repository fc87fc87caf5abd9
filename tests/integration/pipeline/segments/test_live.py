"""The live audience store against the real broker: freshness, snapshots, restart.

Each test gets its own audience directory, so it starts from the topics (no
snapshot) and never sees another process's snapshots; users are unique ids
above 10**12 with a per-run attribute value.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest

from config import Settings
from pipeline.segments import AudienceStore, CriteriaError, open_audience, parse_criteria
from tests.helpers.kafka import end_offsets, eventually, produce

PROFILES, EVENTS = "user-profiles", "user-events"


@pytest.fixture
def audience_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"local_dir": tmp_path, "audience_snapshot_s": 3600.0})


def user_base() -> int:
    return 10**12 + random.randrange(10**11) * 1000


def profile_record(user_id: int, token: str, **attributes) -> tuple[bytes, bytes]:
    value = {"user_id": user_id, "country": "NZ", "attributes": {"segment_probe": token, **attributes},
             "updated_at": datetime.now(timezone.utc).isoformat()}
    return str(user_id).encode(), orjson.dumps(value)


def event_record(user_id: int, name: str, days_ago: float = 0) -> tuple[bytes, bytes]:
    at = datetime.now(timezone.utc) - timedelta(days=days_ago)
    value = {"event_id": str(uuid.uuid4()), "user_id": user_id, "name": name, "occurred_at": at.isoformat()}
    return str(user_id).encode(), orjson.dumps(value)


async def caught_up(store: AudienceStore, brokers: str) -> None:
    """Wait until the store has applied everything the topics held when this was called."""
    targets = {**await end_offsets(brokers, PROFILES), **await end_offsets(brokers, EVENTS)}

    async def done() -> bool:
        return all(store.offsets.get(tp.topic, {}).get(tp.partition, -1) >= end - 1
                   for tp, end in targets.items() if end > 0)

    await eventually(done, timeout_s=600, every_s=0.2)


def probe(token: str, *extra: dict) -> dict:
    return {"conditions": [{"field": "segment_probe", "operator": "equals", "value": token}, *extra]}


def estimate(store: AudienceStore, data: dict) -> int:
    try:
        return store.estimate(parse_criteria(data, store))
    except CriteriaError:  # the probe attribute is not known yet
        return 0


async def test_a_new_profile_counts_in_estimates_within_5_seconds(audience_settings: Settings):
    brokers = audience_settings.kafka_brokers
    token = uuid.uuid4().hex
    async with open_audience(audience_settings) as store:
        await caught_up(store, brokers)
        await produce(brokers, PROFILES, [profile_record(user_base() + 1, token)])
        produced = time.monotonic()

        async def counted() -> bool:
            return estimate(store, probe(token)) == 1

        await eventually(counted, timeout_s=30, every_s=0.05)
        assert time.monotonic() - produced <= 5.0


async def test_restart_resumes_from_the_snapshot_and_applies_only_the_tail(audience_settings: Settings):
    brokers = audience_settings.kafka_brokers
    token, base = uuid.uuid4().hex, user_base()
    buyers = probe(token, {"field": "events.probe_purchase", "operator": "at_least", "value": {"count": 2}})
    async with open_audience(audience_settings) as store:
        await caught_up(store, brokers)
        await produce(brokers, PROFILES, [profile_record(base + i, token, tier=i) for i in (1, 2, 3)])
        await produce(brokers, EVENTS, [event_record(base + 1, "probe_purchase", d) for d in (1, 2)]
                      + [event_record(base + 2, "probe_purchase", 3)])
        await caught_up(store, brokers)
        assert estimate(store, probe(token)) == 3
        assert estimate(store, buyers) == 1
        offsets = {topic: dict(parts) for topic, parts in store.offsets.items()}
    snapshots = list(audience_settings.audience_dir.glob("snapshot-*"))
    assert len(snapshots) == 1  # written on exit

    async with open_audience(audience_settings) as again:
        # Loaded from the snapshot before the follower has read anything.
        assert again.offsets == offsets
        assert estimate(again, probe(token)) == 3 and estimate(again, buyers) == 1
        await caught_up(again, brokers)
        # Nothing was read twice: a replay from the start would double the event counts.
        assert estimate(again, buyers) == 1
        counts = again.frame().filter(again.frame()["user_id"] == base + 2)["event.probe_purchase.count"]
        assert counts.to_list() == [1]
        # And the tail is applied.
        await produce(brokers, EVENTS, [event_record(base + 2, "probe_purchase", 0)])
        await produce(brokers, PROFILES, [profile_record(base + 4, token)])
        await caught_up(again, brokers)
        assert estimate(again, probe(token)) == 4 and estimate(again, buyers) == 2


async def test_invalid_records_are_skipped_and_do_not_stop_the_follower(audience_settings: Settings):
    brokers = audience_settings.kafka_brokers
    token, base = uuid.uuid4().hex, user_base()
    async with open_audience(audience_settings) as store:
        await caught_up(store, brokers)
        await produce(brokers, PROFILES, [(b"x", b"{not json"), (b"y", b'{"user_id": -1}'),
                                          profile_record(base + 1, token)])
        await caught_up(store, brokers)
        assert estimate(store, probe(token)) == 1


async def test_periodic_snapshots_are_written_while_the_store_keeps_following(audience_settings: Settings):
    from pipeline.segments.snapshot import read_newest

    brokers = audience_settings.kafka_brokers
    quick = audience_settings.model_copy(update={"audience_snapshot_s": 0.5})
    token, base = uuid.uuid4().hex, user_base()
    async with open_audience(quick) as store:
        await caught_up(store, brokers)
        await produce(brokers, PROFILES, [profile_record(base + 1, token)])

        async def snapshotted() -> bool:
            saved = read_newest(quick.audience_dir)
            return saved is not None and estimate(saved, probe(token)) == 1

        await eventually(snapshotted, timeout_s=30, every_s=0.2)  # written by a forked child
        await produce(brokers, PROFILES, [profile_record(base + 2, token)])
        await eventually(lambda: _async(estimate(store, probe(token)) == 2), timeout_s=10, every_s=0.05)
    assert not list(quick.audience_dir.glob(".tmp-*"))


async def _async(value: bool) -> bool:
    return value


async def test_an_erasure_tombstone_removes_the_user_from_the_store_and_its_snapshots(audience_settings: Settings):
    """GDPR erasure (pipeline/erase.py) reaches the store as a tombstone on user-profiles: the user's row goes,
    a snapshot without them replaces every older one, and their later records do not bring them back
    unless a new sign-up's profile (created after the erasure) does."""
    from pipeline.segments.snapshot import read_snapshot

    brokers = audience_settings.kafka_brokers
    token, base = uuid.uuid4().hex, user_base()
    erased, kept = base + 1, base + 2
    async with open_audience(audience_settings) as store:
        await caught_up(store, brokers)
        await produce(brokers, PROFILES, [profile_record(erased, token), profile_record(kept, token)])
        await caught_up(store, brokers)
        assert estimate(store, probe(token)) == 2
    assert any((read_snapshot(path).rows_of(np.array([erased])) >= 0).all()  # a snapshot holds the user
               for path in audience_settings.audience_dir.glob("snapshot-*"))

    async with open_audience(audience_settings) as store:
        await produce(brokers, PROFILES, [(str(erased).encode(), None)])
        await caught_up(store, brokers)
        assert estimate(store, probe(token)) == 1
        assert (store.rows_of(np.array([erased])) < 0).all()

        async def only_a_snapshot_without_them() -> bool:
            paths = list(audience_settings.audience_dir.glob("snapshot-*"))
            try:
                return len(paths) == 1 and (read_snapshot(paths[0]).rows_of(np.array([erased])) < 0).all()
            except OSError:  # pruned while read: a newer one replaced it
                return False

        await eventually(only_a_snapshot_without_them, timeout_s=30, every_s=0.2)
        # A late event and an old profile of theirs are dropped.
        await produce(brokers, EVENTS, [event_record(erased, "probe_purchase")])
        await produce(brokers, PROFILES, [profile_record(erased, token)])
        await caught_up(store, brokers)
        assert (store.rows_of(np.array([erased])) < 0).all() and estimate(store, probe(token)) == 1

    async with open_audience(audience_settings) as store:  # the marker survives a restart from the snapshot
        await produce(brokers, EVENTS, [event_record(erased, "probe_purchase")])
        await caught_up(store, brokers)
        assert (store.rows_of(np.array([erased])) < 0).all()
        # A new sign-up under the same id comes back.
        key, value = profile_record(erased, token)
        signup = {**orjson.loads(value), "created_at": (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()}
        await produce(brokers, PROFILES, [(key, orjson.dumps(signup))])
        await caught_up(store, brokers)
        assert estimate(store, probe(token)) == 2

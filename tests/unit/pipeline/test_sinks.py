"""store_batch: transient failures are waited out, refused records isolated, nothing lost."""

import asyncio

import pytest

from pipeline import sinks
from pipeline.codecs import RawRecord, decode_batch
from schemas.records import UserProfile


def batch(*user_ids: int):
    raws = [RawRecord("user-profiles", 0, i, None, f'{{"user_id": {u}}}'.encode()) for i, u in enumerate(user_ids)]
    return decode_batch(raws, UserProfile, "s")


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    async def instant(_delay):
        return None
    monkeypatch.setattr(sinks.asyncio, "sleep", instant)


async def test_a_store_that_is_down_for_a_while_gets_the_whole_batch_once_back():
    stored, failures = [], iter([ConnectionRefusedError(), asyncio.TimeoutError()])

    async def write(records):
        for failure in failures:
            raise failure
        stored.extend(r.user_id for r in records)

    assert await sinks.store_batch(batch(1, 2, 3), write, "s") == []
    assert stored == [1, 2, 3]


async def test_a_record_the_store_refuses_is_dead_lettered_and_the_rest_are_stored():
    stored = []

    async def write(records):
        if any(r.user_id == 2 for r in records):
            raise ValueError("value too long for type character varying(2)")
        stored.extend(r.user_id for r in records)

    dead = await sinks.store_batch(batch(1, 2, 3), write, "ingest_profiles")
    assert stored == [1, 3]
    assert [(d.offset, d.stage) for d in dead] == [(1, "ingest_profiles")]
    assert "refused by the store: value too long" in dead[0].reason


def test_backoff_doubles_up_to_a_cap():
    delays = sinks.backoff_delays(base=0.1, cap=1.0)
    assert [round(next(delays), 2) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]

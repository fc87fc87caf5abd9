"""GDPR erasure and journeys: the export shows where a person is in each flow, the erasure takes them out
of it, and a later event of theirs does not put them back in (pipeline/erase.py)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from pipeline import erase_io
from schemas.keys import flow_progress_key
from tests.helpers.api import bearer, new_key
from tests.helpers.e2e import redis_hash
from tests.helpers.journeys import fresh_ids, publish_flow, remove_flow, send_events, until
from tests.helpers.pipeline import insert_users


@pytest.fixture
def api(settings):
    with TestClient(create_app(settings.model_copy(update={"api_key_cache_s": 0}))) as client:
        yield client


def waiting(run: str) -> dict:
    return {
        "name": "wait then mail",
        "nodes": [
            {"id": "start", "type": "entry", "event": f"browse.{run}", "next": "pause"},
            {"id": "pause", "type": "wait", "duration": "7_days", "next": "mail"},
            {"id": "mail", "type": "send", "channel": "email", "template_id": 1, "next": "done"},
            {"id": "done", "type": "exit"},
        ],
    }


async def test_an_erased_member_leaves_the_journey_and_a_later_event_does_not_bring_them_back(
        settings, pipeline_pool, pipeline_redis, flow_worker, run, api):
    admin = bearer(await new_key(settings, "admin"))
    uid, other = users = fresh_ids(2)
    async with pipeline_pool.acquire() as conn:
        await insert_users(conn, users, lambda u: "en")
    journey_id, _, _ = await publish_flow(pipeline_pool, pipeline_redis, waiting(run))
    flow = f"j{journey_id}"
    try:
        await send_events(settings, [(u, f"browse.{run}", {}) for u in users])

        async def entered(n: int) -> bool:
            return (await redis_hash(settings, flow_progress_key(flow))).get("entered", 0) >= n

        await until(lambda: entered(2))
        exported = await asyncio.to_thread(api.get, f"/api/v1/users/{uid}/export", headers=admin)
        assert exported.status_code == 200, exported.text
        assert flow in exported.json()["journeys"]  # their place in the flow, as the workers hold it

        answer = await asyncio.to_thread(api.delete, f"/api/v1/users/{uid}", headers=admin)
        assert answer.status_code == 202, answer.text
        erasure = answer.json()["erasure_id"]

        async def done() -> bool:
            return (await asyncio.to_thread(api.get, f"/api/v1/erasures/{erasure}", headers=admin)).json()["done"]

        await until(done)
        assert await erase_io.journey_state(settings.kafka_brokers, uid) == {}  # a tombstone on the changelog
        assert flow in await erase_io.journey_state(settings.kafka_brokers, other)

        # A later entry event of theirs is dropped; the other user's next event still reaches the flow.
        await send_events(settings, [(uid, f"browse.{run}", {})])
        third = fresh_ids(1)[0]
        async with pipeline_pool.acquire() as conn:
            await insert_users(conn, [third], lambda u: "en")
        await send_events(settings, [(third, f"browse.{run}", {})])
        await until(lambda: entered(3))
        await asyncio.sleep(1.0)
        assert (await redis_hash(settings, flow_progress_key(flow)))["entered"] == 3
        assert await erase_io.journey_state(settings.kafka_brokers, uid) == {}
    finally:
        await remove_flow(pipeline_pool, pipeline_redis, journey_id)

"""End-to-end helpers: the real API in-process with a key of its own, profiles through ingestion,
fast produce, consumer-group catch-up, and reading what the SMTP peer received."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from starlette.testclient import TestClient

from api.app import create_app
from api.keys import issue_key
from config import Settings
from tests.helpers.api import bearer
from tests.helpers.kafka import end_offsets, eventually
from tests.peers import SmtpPeer

VARIANTS = [("A", 50.0), ("B", 50.0)]  # the A/B split of the campaigns Api.campaign makes


class Api:
    """The real app in-process (TestClient, lifespan included) with a marketer key of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"api_key_cache_s": 0})
        self.client = TestClient(create_app(self.settings))
        self.key = ""

    def __enter__(self) -> Api:
        self.client.__enter__()
        self.key = asyncio.run(self._issue())
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run(self._revoke())
        self.client.__exit__(*exc)

    async def _issue(self) -> str:
        conn = await asyncpg.connect(self.settings.postgres_dsn)
        try:
            async with conn.transaction():
                return (await issue_key(conn, f"e2e-{secrets.token_hex(4)}", "marketer", actor=None)).key
        finally:
            await conn.close()

    async def _revoke(self) -> None:
        from api.auth import key_digest

        conn = await asyncpg.connect(self.settings.postgres_dsn)
        try:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", key_digest(self.key))
        finally:
            await conn.close()

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = 200, **kw) -> dict:
        response = self.client.request(method, path, headers=bearer(self.key), **kw)
        wanted = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in wanted, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else {}

    def template(self, name: str) -> int:
        def parts(lang: str, variant: str) -> dict:
            return {"subject": f"[{lang}:{variant}] News for {{{{ first_name }}}}",
                    "html": f"<p>lang={lang} variant={variant} code={{{{ code }}}}</p>"
                            f'<p><a href="https://shop.example/summer">shop</a></p>',
                    "text": f"lang={lang} variant={variant}"}

        body = {"name": name, "channel": "email", "category": "promotional", "parts": parts("en", "A"),
                "default_language": "en", "translations": {"fr": parts("fr", "A")},
                "variants": {"B": {**parts("en", "B"), "translations": {"fr": parts("fr", "B")}}}}
        return self.call("POST", "/api/v1/templates", 201, json=body)["template_id"]

    def static_segment(self, name: str, attribute: str, value: str, size: int) -> int:
        criteria = {"conditions": [{"field": attribute, "operator": "equals", "value": value}]}

        def sized() -> bool:
            r = self.client.post("/api/v1/segments/estimate", headers=bearer(self.key), json={"criteria": criteria})
            return r.status_code == 200 and r.json()["estimated_size"] == size

        deadline = time.monotonic() + 120
        while not sized():
            assert time.monotonic() < deadline, f"the audience store never counted {size} users for {attribute}"
            time.sleep(0.5)
        created = self.call("POST", "/api/v1/segments", 201,
                            json={"name": name, "criteria": criteria, "dynamic": False})
        assert created["size"] == size, created
        return created["segment_id"]

    def campaign(self, name: str, segment_id: int, template_id: int, ab: bool = True) -> int:
        body = {"name": name, "type": "immediate", "channels": ["email"], "target_segment_id": segment_id,
                "end_time": (datetime.now(timezone.utc) + timedelta(days=7)).isoformat(),
                "content": {"email": {"template_id": template_id, "variables": {"code": "E2E"}}},
                "budget": {"max_spend": 1000, "currency": "USD"}}
        if ab:
            body["ab_test"] = {"enabled": True, "variants": [{"id": v, "weight": w} for v, w in VARIANTS]}
        return self.call("POST", "/api/v1/campaigns", 201, json=body)["campaign_id"]

    def launch(self, campaign_id: int) -> dict:
        return self.call("POST", f"/api/v1/campaigns/{campaign_id}/launch")

    def get(self, campaign_id: int) -> dict:
        return self.call("GET", f"/api/v1/campaigns/{campaign_id}")

    def wait_status(self, campaign_id: int, status: str, timeout_s: float = 240.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.get(campaign_id)
            if got["status"] == status:
                return got
            assert time.monotonic() < deadline, f"campaign {campaign_id} still {got['status']}: {got['metrics']}"
            time.sleep(0.5)

    def patch_preferences(self, user_id: int, body: dict) -> dict:
        return self.call("PATCH", f"/api/v1/users/{user_id}/preferences", json=body)


def profile(user_id: int, token: str, language: str, email: bool = True, **attributes) -> dict:
    return {"user_id": user_id, "email": f"u{user_id}@e2e.example" if email else None, "first_name": f"F{user_id % 97}",
            "language": language, "timezone": "UTC", "attributes": {"e2e_run": token, **attributes}}


async def publish_profiles(settings: Settings, profiles: list[dict]) -> None:
    """Onto user-profiles, then wait until ingestion has them all in PostgreSQL."""
    await produce_fast(settings, "user-profiles", [(str(p["user_id"]).encode(), orjson.dumps(p)) for p in profiles])
    ids = [p["user_id"] for p in profiles]

    async def stored() -> bool:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            return await conn.fetchval("SELECT count(*) FROM users WHERE user_id = ANY($1::bigint[])", ids) == len(ids)
        finally:
            await conn.close()

    await eventually(stored, timeout_s=120)


async def produce_fast(settings: Settings, topic: str, records: list[tuple[bytes, bytes]],
                       partitions: list[int | None] | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, partition=(partitions or [None] * len(records))[i])
                   for i, (k, v) in enumerate(records)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_consumed(settings: Settings, group: str, topic: str, timeout_s: float = 60.0) -> None:
    """Until ``group`` has committed the end of ``topic`` (e.g. the gate's preference replica caught up)."""
    ends = await end_offsets(settings.kafka_brokers, topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    await admin.start()
    try:
        async def caught_up() -> bool:
            committed = await admin.list_consumer_group_offsets(group)
            return all(end == 0 or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())

        await eventually(caught_up, timeout_s=timeout_s)
    finally:
        await admin.close()


def user_of(address: str) -> int:
    local = address.split("@")[0].removeprefix("u")
    return int(local) if local.isdigit() else -1


def mails_by_user(peer: SmtpPeer, campaign_ids: set[int] | None = None) -> dict[int, list]:
    """Received mail per user id, optionally only the given campaigns' (the tracking links carry no
    campaign id in clear, so the subject marker and Message-ID are what tell mails apart)."""
    out: dict[int, list] = {}
    for mail in list(peer.messages):
        for rcpt in mail.rcpt_tos:
            out.setdefault(user_of(rcpt), []).append(mail)
    return out


async def redis_hash(settings: Settings, key: str) -> dict[str, float]:
    r = aioredis.from_url(settings.redis_url)
    try:
        return {k.decode(): float(v) for k, v in (await r.hgetall(key)).items()}
    finally:
        await r.aclose()

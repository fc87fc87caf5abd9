"""The in-app inbox API: the list the in-app sender writes, and its live server-sent-events stream.

Messages are put in the inbox exactly as the in-app channel does (``RedisInbox``, real
Redis). The stream is tested against a real uvicorn server (TestClient waits for a
response to finish, and an SSE stream never does).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis
from redis.asyncio import Redis

from api.app import create_app
from config import Settings
from pipeline.channels import Message
from pipeline.channels.in_app import RedisInbox, inbox_entry
from tests.helpers.api import assert_error, bearer, serve
from schemas.keys import inbox_key


def _user_id() -> int:
    return random.randrange(10**12, 2 * 10**12)


def _message(user_id: int, n: int) -> Message:
    return Message(channel="in_app", to=str(user_id), message_id=f"m-{user_id}-{n}", campaign_id=7, user_id=user_id,
                   parts={"title": f"Title {n}", "body": f"Body {n}", "action_url": "https://app.example/x"},
                   data={"campaign_id": "7"})


@pytest.fixture
def user(api_settings: Settings) -> Iterator[int]:
    user_id = _user_id()
    yield user_id
    redis.Redis.from_url(api_settings.redis_url).delete(inbox_key(user_id))


def _deliver(settings: Settings, messages: list[Message]) -> None:
    async def go() -> None:
        client = Redis.from_url(settings.redis_url)
        try:
            results = await RedisInbox(client).send_many(messages)
            assert all(r.ok for r in results)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_the_inbox_lists_in_app_messages_newest_first(client, admin_key, api_settings, user):
    _deliver(api_settings, [_message(user, n) for n in range(3)])
    response = client.get(f"/api/v1/users/{user}/inbox", headers=bearer(admin_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == user
    assert [m["title"] for m in body["messages"]] == ["Title 2", "Title 1", "Title 0"]
    first = body["messages"][0]
    assert (first["message_id"], first["campaign_id"], first["body"], first["action_url"]) == (
        f"m-{user}-2", 7, "Body 2", "https://app.example/x")

    limited = client.get(f"/api/v1/users/{user}/inbox?limit=1", headers=bearer(admin_key)).json()
    assert [m["title"] for m in limited["messages"]] == ["Title 2"]


def test_an_empty_inbox_is_an_empty_list(client, issue_key, user):
    analyst = issue_key("analyst")["key"]
    response = client.get(f"/api/v1/users/{user}/inbox", headers=bearer(analyst))
    assert response.status_code == 200
    assert response.json() == {"user_id": user, "messages": []}


def test_the_inbox_needs_a_key_and_a_sane_limit(client, admin_key, user):
    assert_error(client.get(f"/api/v1/users/{user}/inbox"), 401, "unauthorized")
    error = assert_error(client.get(f"/api/v1/users/{user}/inbox?limit=0", headers=bearer(admin_key)), 422,
                         "validation_error")
    assert error["fields"][0]["field"] == "limit"


@pytest.fixture(scope="module")
def server(api_settings: Settings) -> Iterator[str]:
    url, stop = serve(create_app(api_settings), "inbox-api")
    yield url
    stop()


def test_the_stream_delivers_new_in_app_messages_live(server, admin_key, api_settings, user):
    with httpx.Client(base_url=server, timeout=10) as http, \
            http.stream("GET", f"/api/v1/users/{user}/inbox/stream", headers=bearer(admin_key)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == ": connected"  # subscribed: what is published now reaches us
        _deliver(api_settings, [_message(user, 1)])
        event: dict[str, str] = {}
        for line in lines:
            if not line:
                if "data" in event:
                    break
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            event[name] = value
    assert event["event"] == "message"
    assert event["id"] == f"m-{user}-1"
    data = orjson.loads(event["data"])
    assert (data["title"], data["body"], data["campaign_id"]) == ("Title 1", "Body 1", 7)


def test_the_stream_of_one_user_does_not_carry_another_users_messages(server, admin_key, api_settings, user):
    other = _user_id()
    with httpx.Client(base_url=server, timeout=10) as http, \
            http.stream("GET", f"/api/v1/users/{user}/inbox/stream", headers=bearer(admin_key)) as response:
        lines = response.iter_lines()
        assert next(lines) == ": connected"
        raw = redis.Redis.from_url(api_settings.redis_url)
        raw.publish(inbox_key(other), inbox_entry(_message(other, 1)))
        _deliver(api_settings, [_message(user, 2)])
        data = next(line for line in lines if line.startswith("data: "))
        raw.delete(inbox_key(other))
    assert orjson.loads(data.removeprefix("data: "))["message_id"] == f"m-{user}-2"

"""In-app messages: a per-user inbox in Redis.

    inbox:{user_id}   a list, newest first, capped at INBOX_CAP entries (LPUSH + LTRIM)
    PUBLISH inbox:{user_id} <entry>   so a live connection (server-sent events) sees it at once

Each entry is JSON: message_id, campaign_id, title, body, action_url,
image_url, created_at (ISO 8601, UTC), plus ``data``. The inbox API (issue 6)
reads the list; pushing twice the same message_id is the caller's concern
(the pipeline's dedup), the inbox stores what it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from pipeline.channels.base import ConcurrentSends, Message, OnResult, SendResult
from schemas.keys import inbox_key

INBOX_CAP = 200


def inbox_entry(message: Message) -> bytes:
    parts = message.parts
    return orjson.dumps(
        {
            "message_id": message.message_id,
            "campaign_id": message.campaign_id,
            "title": parts.get("title", ""),
            "body": parts.get("body", ""),
            "action_url": parts.get("action_url"),
            "image_url": parts.get("image_url"),
            "created_at": datetime.now(timezone.utc).isoformat(),
            "data": dict(message.data),
        }
    )


class RedisInbox(ConcurrentSends):
    name = "in_app"

    def __init__(self, redis: Redis, cap: int = INBOX_CAP) -> None:
        self.redis = redis
        self.cap = cap

    async def send(self, message: Message) -> SendResult:
        if not str(message.to).isdigit():
            return SendResult.permanent(f"an in-app recipient is a user id, not {message.to!r}", recipient_problem=True)
        key, entry = inbox_key(message.to), inbox_entry(message)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, entry).ltrim(key, 0, self.cap - 1).publish(key, entry)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            return SendResult.transient(f"Redis: {type(exc).__name__}: {exc}")
        return SendResult.sent(message.message_id)

    async def forget(self, user_ids: Sequence[int]) -> None:
        """Delete the inboxes of erased users (pipeline/erase.py)."""
        if user_ids:
            await self.redis.delete(*(inbox_key(u) for u in user_ids))

    async def send_many(self, messages: Sequence[Message], on_result: OnResult | None = None
                        ) -> list[SendResult]:
        """One round trip for the whole batch."""
        good = [m for m in messages if str(m.to).isdigit()]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for m in good:
                    key, entry = inbox_key(m.to), inbox_entry(m)
                    pipe.lpush(key, entry).ltrim(key, 0, self.cap - 1).publish(key, entry)
                await pipe.execute()
            failure = None
        except (RedisError, OSError) as exc:
            failure = SendResult.transient(f"Redis: {type(exc).__name__}: {exc}")
        results = [
            (failure or SendResult.sent(m.message_id)) if str(m.to).isdigit()
            else SendResult.permanent(f"an in-app recipient is a user id, not {m.to!r}", recipient_problem=True)
            for m in messages
        ]
        if on_result is not None:
            for i, result in enumerate(results):
                on_result(i, result)
        return results

    async def aclose(self) -> None:
        """The Redis client belongs to the caller."""

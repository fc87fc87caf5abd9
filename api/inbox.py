"""In-app inbox: what the in-app channel delivered to a user, and a live stream of new messages.

    GET /api/v1/users/{id}/inbox?limit=50      admin, marketer, analyst   newest first
    GET /api/v1/users/{id}/inbox/stream        admin, marketer, analyst   server-sent events

The in-app sender (``pipeline.channels.in_app.RedisInbox``) keeps each user's
inbox as a capped Redis list ``inbox:{user_id}`` (newest first) and PUBLISHes
every new entry on the channel of the same name. The stream subscribes to that
channel and writes each entry as an SSE ``message`` event (``id`` is the
message id), with a comment every ``KEEPALIVE_S`` so proxies keep the
connection open. A client that reconnects reads the list to catch up; the
stream itself carries only what arrives while it is connected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from api.auth import ROLES, require_role
from api.errors import ApiError, FieldProblem, user_id_path
from api.inputs import ascii_int
from api.openapi import LIMIT, operation
from pipeline.channels.in_app import INBOX_CAP
from schemas.keys import inbox_key

KEEPALIVE_S = 15.0


class InboxMessage(BaseModel):
    message_id: str
    campaign_id: int | None
    title: str
    body: str
    action_url: str | None = None
    image_url: str | None = None
    created_at: str
    data: dict[str, Any] = Field(default_factory=dict)


class Inbox(BaseModel):
    user_id: int
    messages: list[InboxMessage]


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "50")
    limit = ascii_int(raw) or 0
    if not 1 <= limit <= INBOX_CAP:
        raise ApiError(422, "validation_error", "limit is out of range",
                       fields=[FieldProblem(field="limit", reason=f"an integer between 1 and {INBOX_CAP}")])
    return limit


@require_role(*ROLES)
@operation("A user's in-app inbox", responses={200: Inbox}, query={"limit": {**LIMIT, "maximum": INBOX_CAP}})
async def get_inbox(request: Request) -> Response:
    """The user's in-app messages, newest first (at most ``limit``, default 50, up to the inbox's cap)."""
    user_id = user_id_path(request)
    limit = _limit(request)
    entries = await request.app.state.redis.lrange(inbox_key(user_id), 0, limit - 1)
    messages = []
    for entry in entries:
        try:
            messages.append(orjson.loads(entry))
        except orjson.JSONDecodeError:
            continue  # not ours; the inbox is a list anyone with Redis access could write
    return JSONResponse({"user_id": user_id, "messages": messages})


def _sse(entry: bytes) -> bytes:
    try:
        message_id = str(orjson.loads(entry).get("message_id", ""))
    except (orjson.JSONDecodeError, AttributeError):
        message_id = ""
    data = entry.replace(b"\r", b"").replace(b"\n", b"\ndata: ")  # one JSON line in practice
    head = f"id: {message_id}\n".encode() if message_id else b""
    return head + b"event: message\ndata: " + data + b"\n\n"


async def _events(request: Request, user_id: int) -> AsyncIterator[bytes]:
    pubsub = request.app.state.redis.pubsub()
    await pubsub.subscribe(inbox_key(user_id))
    try:
        yield b": connected\n\n"  # subscribed: anything published from now on is delivered
        idle = 0.0
        while True:
            # Short waits: the API's Redis client has a 5 s socket timeout, and we notice a gone client.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "message":
                idle = 0.0
                yield _sse(message["data"])
                continue
            if await request.is_disconnected():
                return
            idle += 1.0
            if idle >= KEEPALIVE_S:
                idle = 0.0
                yield b": keep-alive\n\n"
    finally:
        try:
            await asyncio.shield(pubsub.aclose())
        except Exception:  # noqa: BLE001 - the connection is going away anyway
            pass


@require_role(*ROLES)
@operation("Live stream of a user's new in-app messages", responses={200: "text/event-stream"})
async def stream_inbox(request: Request) -> Response:
    """Server-sent events: one ``message`` event per new in-app message (JSON as in the inbox), live."""
    user_id = user_id_path(request)
    return StreamingResponse(_events(request, user_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


routes = [
    Route("/api/v1/users/{user_id:int}/inbox", get_inbox, methods=["GET"]),
    Route("/api/v1/users/{user_id:int}/inbox/stream", stream_inbox, methods=["GET"]),
]

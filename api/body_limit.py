"""A request-body size limit, as pure ASGI middleware.

A body larger than the limit gets 413 in the one error shape before the
handler reads it: at once when ``Content-Length`` says so, and for a chunked
body (no length) as soon as the bytes received pass the limit, so that a 100 MB
post to a public endpoint costs the API at most the limit in memory.

Paths under a prefix of ``wider`` get their own limit (the provider callbacks
take SendGrid's batches of events, up to a few megabytes).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int, wider: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.wider = dict(wider or {})

    def _limit_for(self, path: str) -> int:
        return next((limit for prefix, limit in self.wider.items() if path.startswith(prefix)), self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        lengths = [v for k, v in scope["headers"] if k == b"content-length"]
        if lengths:
            length = lengths[0].decode("latin-1").strip()
            if len(lengths) > 1 or not (length.isascii() and length.isdigit()):
                await _refuse(scope, receive, send, ApiError(400, "bad_request", "Content-Length is not one number"))
                return
            if int(length) > limit:
                await _refuse(scope, receive, send, _too_large(limit))
                return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:  # the handler answered before reading it all; nothing more can be said
                raise
            await error_response(_too_large(limit))(scope, receive, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is over the limit of {limit} bytes",
                    headers={"Connection": "close"})


async def _refuse(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    await error_response(error)(scope, receive, send)

"""Open and click tracking for email: the pixel and the signed redirect.

    GET  /t/o/{token}   public: a 1×1 GIF; publishes an "opened" DeliveryEvent
    GET  /t/c/{token}   public: 302 to the signed URL; publishes a "clicked" DeliveryEvent

Tokens are made by the email sender (``pipeline.channels.tracking``): they sign
the message id, campaign, user, variant and target URL with the
``tracked-link`` subkey, so a token whose URL was changed is refused (400):
the redirect can never be used to send people elsewhere. Events go to
``delivery-events`` as a one-event ``DeliveryEventBatch`` keyed by the user id,
so they land on the user's partition like every other event of the user.

Publishing is fire-and-forget from the visitor's point of view: the pixel and
the redirect are answered even if Kafka is slow (a mail client does not wait
for our analytics), and an event that could not be published is logged.
Opens are approximate by nature (image proxies prefetch, clients block images): an open that looks
automated (a scanner's or a privacy proxy's user agent or address, or within seconds of the message being
rendered, which version 2 pixel tokens say) is published with ``machine`` set, and counted apart.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api.errors import ApiError
from api.openapi import ANY_QUERY, operation
from api.ratelimit import limited_by_address
from pipeline.channels.tracking import PIXEL_GIF, InvalidTrackingToken, TrackedLink, link_key, read_token
from pipeline.engagement import machine_open
from pipeline.signing import signing_key
from schemas.messages import DeliveryEvent, DeliveryEventBatch
from schemas.topics import DELIVERY_EVENTS

log = structlog.get_logger()
_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache"}
_pending: set[asyncio.Task] = set()


def _key(request: Request) -> bytes:
    state = request.app.state
    key = getattr(state, "tracking_key", None)
    if key is None:
        key = state.tracking_key = link_key(signing_key(state.settings))
    return key


def _link(request: Request) -> TrackedLink:
    try:
        return read_token(_key(request), request.path_params["token"])
    except InvalidTrackingToken as exc:
        raise ApiError(400, "invalid_token", f"this tracking link is not valid: {exc}") from None


async def _publish(request: Request, link: TrackedLink, status: str, machine: bool = False) -> None:
    event = DeliveryEvent(message_id=link.message_id, campaign_id=link.campaign_id, user_id=link.user_id,
                          channel="email", variant=link.variant, status=status,
                          reason=link.url or None, machine=machine)
    value = orjson.dumps(DeliveryEventBatch(events=[event]).model_dump(mode="json"))
    try:
        await request.app.state.kafka.send_and_wait(DELIVERY_EVENTS.name, value=value, key=str(link.user_id).encode())
    except Exception as exc:  # noqa: BLE001 - the visitor gets their page anyway
        log.warning("tracking event not published", status=status, campaign_id=link.campaign_id, error=repr(exc))


def _in_background(request: Request, link: TrackedLink, status: str, machine: bool = False) -> None:
    task = asyncio.get_running_loop().create_task(_publish(request, link, status, machine))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


@limited_by_address("tracking")
@operation("Email open pixel", responses={200: "image/gif"}, query=ANY_QUERY)
async def open_pixel(request: Request) -> Response:
    """A transparent 1×1 GIF; records that the email was opened (400 if the token is not Herald's)."""
    link = _link(request)
    if link.url:
        raise ApiError(400, "invalid_token", "this is a click token, not an open token")
    since = time.time() - link.issued_at if link.issued_at is not None else None
    client = request.client.host if request.client else ""
    machine = machine_open(request.headers.get("user-agent", ""), client, since_sent_s=since)
    _in_background(request, link, "opened", machine)
    return Response(PIXEL_GIF, media_type="image/gif", headers=_NO_STORE)


@limited_by_address("tracking")
@operation("Tracked link redirect", responses={302: "text/plain"}, query=ANY_QUERY)
async def click_redirect(request: Request) -> Response:
    """Redirects (302) to the URL the token signs and records the click (400 if forged or altered)."""
    link = _link(request)
    if not link.url.lower().startswith(("http://", "https://")):
        raise ApiError(400, "invalid_token", "this token names no link to follow")
    _in_background(request, link, "clicked")
    return RedirectResponse(link.url, status_code=302, headers=_NO_STORE)


routes = [
    Route("/t/o/{token}", open_pixel, methods=["GET"]),
    Route("/t/c/{token}", click_redirect, methods=["GET"]),
]

"""Provider callbacks: what became of a message after the provider took it.

    POST /callbacks/sendgrid/events   SendGrid's Event Webhook (JSON array; ECDSA-signed)
    POST /callbacks/twilio/status     Twilio's status callback (form; X-Twilio-Signature)

Public (the providers hold no API key), and refused with 403 unless the provider's signature checks
(``pipeline.callbacks``). The events go to ``delivery-events`` as one ``DeliveryEventBatch`` per user,
keyed by the user id (so they land on the user's partition, like every other event of the user), and the
answer waits for Kafka's acknowledgement: a provider retries whatever did not get a 2xx, so nothing it
told Herald is lost, and the retries it sends (and its own duplicates) are counted once downstream
(per message and status, ``pipeline.metrics``). Bodies over ``api_max_callback_bytes`` get 413 before they
are read (``api.body_limit``).
"""

from __future__ import annotations

import asyncio
import time

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.errors import ApiError, read_form
from api.openapi import ANY_QUERY, operation
from api.ratelimit import limited_by_address
from pipeline import callbacks as cb
from pipeline.partitioning import per_user_records
from schemas.messages import DeliveryEvent
from schemas.topics import DELIVERY_EVENTS



class CallbackReceipt(BaseModel):
    accepted: int  # events published to delivery-events
    skipped: dict[str, int]  # items not counted, by why (not_herald, not_counted:<event>, unknown_event, ...)


async def _body(request: Request) -> bytes:
    # api.body_limit caps it at settings.api_max_callback_bytes (SendGrid posts at most ~768 KB; Twilio a few
    # hundred bytes) before it is read.
    return await request.body()


def _refused(exc: cb.CallbackRefused) -> ApiError:
    return ApiError(403, "invalid_signature", str(exc))


async def signed_twilio_form(request: Request) -> dict[str, str]:
    """The form Twilio posted, once its X-Twilio-Signature checks (400, 403, 413 and 415 otherwise)."""
    settings = request.app.state.settings
    params = await read_form(request)
    # Twilio signs the URL it was given, which is the public one (not what a proxy in front of us rewrote).
    query = request.url.query
    url = settings.public_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")
    try:
        cb.verify_twilio(settings.sms_auth_token, url, params, request.headers.get(cb.TWILIO_SIGNATURE))
    except cb.CallbackRefused as exc:
        raise _refused(exc) from None
    return dict(params)


async def _publish(request: Request, events: list[DeliveryEvent]) -> None:
    kafka = request.app.state.kafka
    try:
        sent = [await kafka.send(DELIVERY_EVENTS.name, value=value, key=key) for key, value in per_user_records(events)]
        await asyncio.gather(*sent)
    except Exception as exc:  # noqa: BLE001 - the provider retries what did not get a 2xx
        raise ApiError(503, "unavailable", f"the events could not be stored, send them again: {exc!r}") from None


def _sendgrid_key(request: Request):
    state = request.app.state
    key = getattr(state, "sendgrid_events_key", None)
    if key is None:
        key = state.sendgrid_events_key = cb.sendgrid_public_key(state.settings.sendgrid_events_key)
    return key


@limited_by_address("callbacks")
@operation("SendGrid event webhook", responses={200: CallbackReceipt}, query=ANY_QUERY)
async def sendgrid_events(request: Request) -> Response:
    """Delivery, bounce, spam report, open and click events of emails sent through the batch provider."""
    body = await _body(request)
    settings = request.app.state.settings
    now = time.time()
    try:
        cb.verify_sendgrid(_sendgrid_key(request), request.headers.get(cb.SENDGRID_SIGNATURE),
                           request.headers.get(cb.SENDGRID_TIMESTAMP), body, now, settings.callback_tolerance_s)
    except cb.CallbackRefused as exc:
        raise _refused(exc) from None
    try:
        read = cb.read_sendgrid(orjson.loads(body), now)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the body is not JSON") from None
    except ValueError as exc:
        raise ApiError(422, "invalid_events", str(exc)) from None
    await _publish(request, read.events)
    return JSONResponse(CallbackReceipt(accepted=len(read.events), skipped=read.skipped).model_dump())


@limited_by_address("callbacks")
@operation("Twilio message status callback", responses={200: CallbackReceipt}, query=ANY_QUERY)
async def twilio_status(request: Request) -> Response:
    """Twilio's status changes of an SMS Herald sent (delivered, undelivered, failed)."""
    form = await signed_twilio_form(request)
    read = cb.read_twilio(form, dict(request.query_params), time.time())
    await _publish(request, read.events)
    return JSONResponse(CallbackReceipt(accepted=len(read.events), skipped=read.skipped).model_dump())


routes = [
    Route("/callbacks/sendgrid/events", sendgrid_events, methods=["POST"]),
    Route("/callbacks/twilio/status", twilio_status, methods=["POST"]),
]

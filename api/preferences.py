"""User preferences and unsubscribes: what each person agreed to receive.

    GET   /api/v1/users/{user_id}/preferences    any role
    PATCH /api/v1/users/{user_id}/preferences    admin, marketer
    POST  /api/v1/unsubscribe                    public: the signed token is the authority
    GET   /u/{token}                             public: confirmation page, changes nothing
    POST  /u/{token}                             public: RFC 8058 one-click unsubscribe

PostgreSQL is the source of truth. A change, its audit row and (for each
channel switched off) its ``unsubscribes`` row commit in one transaction, and
the user's whole new state is published to ``preference-updates`` *before*
that commit, while the user's lock is held: so a 200 means the change is both in
PostgreSQL and in Kafka, and two changes to one user reach the compacted topic
in the order they were made. A change that cannot be published is rolled back
(503). Every request republishes the current state even when it changes
nothing, so repeating a request repairs a record that was published for a
transaction that then failed to commit.

GET on an unsubscribe link never changes anything (RFC 8058 section 3.2: mail
scanners fetch links); only the POST does.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from api.auth import ROLES, Caller, require_role
from api.errors import ApiError, FieldProblem, parse_body
from api.openapi import ANY_QUERY, operation
from api.ratelimit import limited_by_address
from pipeline import audit
from pipeline.attribution import parse_touches
from pipeline.partitioning import per_user_records
from pipeline.pii import CONTACT_COLUMNS, email_index, sealed
from pipeline.preferences_store import COLUMNS, LOCK_SPACE, decoded, stored_values
from pipeline.signing import signing_key
from pipeline.unsubscribe import InvalidUnsubscribeToken, MalformedToken, UnsubscribeClaim, read_unsubscribe_token
from schemas.preferences import (
    CHANNELS,
    Channel,
    ConsentSource,
    Preferences,
    PreferencesPatch,
    apply_patch,
    preference_key,
    stored_preferences,
    switch_off,
    switched_off,
)
from schemas.topics import DELIVERY_EVENTS, PREFERENCE_UPDATES
from schemas.keys import touch_key
from schemas.messages import DeliveryEvent, message_id
from schemas.encoding import BIGINT_MAX

log = structlog.get_logger()

_PUBLISH_TIMEOUT_S = 10.0
# Whoever holds a valid link acts; the audit trail names the link, not an API key.
_LINK_ACTOR = "unsubscribe-link"


class UserNotFound(Exception):
    pass


class UnsubscribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    token: str = Field(min_length=1, max_length=200, description="From the unsubscribe link")
    email: str | None = Field(default=None, max_length=255, description="If given, must be the user's address")
    campaign_id: int | None = Field(default=None, description="If given, must be the campaign the token names")
    reason: str | None = Field(default=None, max_length=500)


class UnsubscribeResult(BaseModel):
    user_id: int
    channel: Channel
    campaign_id: int | None
    unsubscribed: bool = True
    changed: bool = Field(description="False if the channel was already off")


# ---- storage -------------------------------------------------------------------------------------


async def _insert(conn: asyncpg.Connection, prefs: Preferences) -> bool:
    """Insert the first row of a user; False if another transaction inserted it first."""
    try:
        inserted = await conn.fetchval(
            f"INSERT INTO user_preferences (user_id, {COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9, $10)"
            " ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
            prefs.user_id,
            *stored_values(prefs),
        )
    except asyncpg.ForeignKeyViolationError:  # the user was deleted meanwhile
        raise UserNotFound from None
    return inserted is not None


async def _update(conn: asyncpg.Connection, prefs: Preferences) -> None:
    await conn.execute(
        f"UPDATE user_preferences SET ({COLUMNS})"
        " = ($2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9, $10) WHERE user_id = $1",
        prefs.user_id,
        *stored_values(prefs),
    )


async def _publish(request: Request, prefs: Preferences) -> None:
    """Send the whole state to ``preference-updates`` and wait for the broker's acks=all."""
    value = orjson.dumps(prefs.to_update().model_dump(mode="json"))
    try:
        await asyncio.wait_for(
            request.app.state.kafka.send_and_wait(
                PREFERENCE_UPDATES.name, value=value, key=preference_key(prefs.user_id)
            ),
            _PUBLISH_TIMEOUT_S,
        )
    except (KafkaError, asyncio.TimeoutError) as exc:
        reason = f"could not publish the change to Kafka ({exc.__class__.__name__}); nothing was changed, try again"
        raise ApiError(503, "unavailable", reason) from None


async def change_preferences(
    request: Request,
    user_id: int,
    decide: Callable[[Preferences], Preferences],
    *,
    actor: Caller | str,
    action: str,
    source: ConsentSource,
    reason: str | None = None,
    campaign_id: int | None = None,
    check_user: Callable[[asyncpg.Record], None] | None = None,
) -> tuple[Preferences, Preferences]:
    """Apply ``decide`` to a user's preferences in one transaction; return (before, after).

    ``check_user`` sees the ``users`` row (email) before anything changes and
    may raise. Raises ``UserNotFound`` for an unknown user.
    """
    if user_id > BIGINT_MAX:
        raise UserNotFound
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        # One change per user at a time, even before the user has a row to lock: the
        # publish inside the lock is what keeps the topic in the order of the changes.
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashint8($2))", LOCK_SPACE, user_id)
        for _ in range(3):
            user = await conn.fetchrow(f"SELECT {CONTACT_COLUMNS}, email_idx FROM users WHERE user_id = $1", user_id)
            if user is None:
                raise UserNotFound
            if check_user is not None:
                check_user(user)
            row = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM user_preferences WHERE user_id = $1 FOR UPDATE", user_id
            )
            before = stored_preferences(user_id, decoded(row), request.app.state.settings.opt_in_channels)
            after = decide(before)
            if after is not before:
                if row is not None:
                    await _update(conn, after)
                elif not await _insert(conn, after):
                    continue  # a writer outside our lock inserted first; start again from its row
                await audit.record(
                    conn,
                    actor,
                    action,
                    "user_preferences",
                    user_id,
                    before.model_dump(mode="json"),
                    after.model_dump(mode="json"),
                )
                for channel in switched_off(before, after):
                    await conn.execute(
                        "INSERT INTO unsubscribes (user_id, email_enc, email_idx, channel, reason, campaign_id, source)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        user_id,
                        *(_sealed_email(request, user) if channel == "email" else (None, None)),
                        channel,
                        reason,
                        campaign_id,
                        source,
                    )
            await _publish(request, after)
            return before, after
    raise RuntimeError(f"preferences of user {user_id} kept changing under three attempts in a row")


def _sealed_email(request: Request, user: asyncpg.Record) -> tuple[str | None, str | None]:
    """The unsubscribes row's (email_enc, email_idx): the user's address as stored, encrypted."""
    if user["email_enc"] is not None:
        return user["email_enc"], user["email_idx"]
    return sealed(request.app.state.pii, "email", user["email"])  # a row from before migration 012


def _email_index_of(request: Request, user: asyncpg.Record) -> str | None:
    """The blind index of the user's address (computed for a row from before migration 012)."""
    return user["email_idx"] or sealed(request.app.state.pii, "email", user["email"])[1]


def _not_found(user_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no user {user_id}")


# ---- preferences ---------------------------------------------------------------------------------


@require_role(*ROLES)
@operation("A user's preferences", responses={200: Preferences})
async def get_preferences(request: Request) -> Response:
    """Channels, weekly frequency caps, categories and consent of one user; defaults until they change any.

    Defaults: every channel and every category on, no frequency caps, consent
    source "default" (not granted on a channel that needs opt-in, SMS by default:
    nothing goes out on it until consent is recorded). Caps count messages per
    channel over a rolling 7 days.
    """
    user_id = request.path_params["user_id"]
    if user_id > BIGINT_MAX:
        raise _not_found(user_id)
    row = await request.app.state.postgres.fetchrow(
        f"SELECT u.user_id AS known, p.user_id AS stored, {', '.join('p.' + c.strip() for c in COLUMNS.split(','))}"
        " FROM users u LEFT JOIN user_preferences p ON p.user_id = u.user_id WHERE u.user_id = $1",
        user_id,
    )
    if row is None:
        raise _not_found(user_id)
    prefs = stored_preferences(user_id, decoded(row) if row["stored"] is not None else None,
                               request.app.state.settings.opt_in_channels)
    return JSONResponse(prefs.model_dump(mode="json"))


@require_role("admin", "marketer")
@operation("Change a user's preferences", body=PreferencesPatch, responses={200: Preferences})
async def patch_preferences(request: Request) -> Response:
    """Changes only the fields sent; switching a channel off records an unsubscribe (with the reason, if any).

    In ``frequency_cap`` a null removes a channel's cap. The new state is in
    PostgreSQL and on the ``preference-updates`` topic when this answers 200.
    """
    user_id = request.path_params["user_id"]
    patch = await parse_body(request, PreferencesPatch)
    now = datetime.now(timezone.utc)
    try:
        _, after = await change_preferences(
            request,
            user_id,
            lambda current: apply_patch(current, patch, "api", now),
            actor=request.state.caller,
            action="preferences.updated",
            source="api",
            reason=patch.unsubscribe_reason,
        )
    except UserNotFound:
        raise _not_found(user_id) from None
    return JSONResponse(after.model_dump(mode="json"))


# ---- unsubscribe links ---------------------------------------------------------------------------


def _verify(request: Request, token: str) -> UnsubscribeClaim:
    """The token's claim, or a 400 (malformed) / 403 (forged, expired) naming the token."""
    try:
        return read_unsubscribe_token(signing_key(request.app.state.settings), token)
    except InvalidUnsubscribeToken as exc:
        status = 400 if isinstance(exc, MalformedToken) else 403
        problem = FieldProblem(field="token", reason=str(exc))
        raise ApiError(status, exc.code, f"unsubscribe token refused: {exc}", [problem]) from None


async def _unsubscribe(
    request: Request,
    claim: UnsubscribeClaim,
    source: ConsentSource,
    reason: str | None = None,
    email: str | None = None,
) -> tuple[Preferences, Preferences]:
    def same_address(user: asyncpg.Record) -> None:
        if email is not None and _email_index_of(request, user) != email_index(request.app.state.pii, email):
            raise ApiError(
                403,
                "token_mismatch",
                "the email address is not the one this unsubscribe token was issued for",
                [FieldProblem(field="email", reason="does not match the token's user")],
            )

    now = datetime.now(timezone.utc)
    before, after = await change_preferences(
        request,
        claim.user_id,
        lambda current: switch_off(current, claim.channel, source, now),
        actor=_LINK_ACTOR,
        action="preferences.unsubscribed",
        source=source,
        reason=reason,
        campaign_id=claim.campaign_id,
        check_user=same_address,
    )
    if claim.campaign_id is not None and before.enabled(claim.channel) and not after.enabled(claim.channel):
        await _count_unsubscribe(request, claim, now)
    return before, after


async def _count_unsubscribe(request: Request, claim: UnsubscribeClaim, now: datetime) -> None:
    """The campaign's ``unsubscribed`` count: an event of the campaign's message to this user (once per message,
    however often the link is used), with the variant and step of the last message the campaign sent them on
    this channel (their touch, pipeline/attribution.py), so it counts in the variant's breakdown too. The
    opt-out itself is already stored; a count that could not be published is logged, not the person's problem."""
    mid, variant, step = message_id(claim.campaign_id, claim.user_id, claim.channel), None, "send"
    try:
        raw = await request.app.state.redis.hget(touch_key(claim.user_id), str(claim.campaign_id))
    except RedisError:
        raw = None
    touches, _ = parse_touches({str(claim.campaign_id): raw} if raw else {})
    if touches and touches[0].channel == claim.channel:
        mid, variant, step = touches[0].message_id, touches[0].variant, touches[0].step
    event = DeliveryEvent(message_id=mid, campaign_id=claim.campaign_id, user_id=claim.user_id, channel=claim.channel,
                          variant=variant, step=step, status="unsubscribed", at=now)
    try:
        [(key, value)] = per_user_records([event])
        await request.app.state.kafka.send_and_wait(DELIVERY_EVENTS.name, value, key=key)
    except KafkaError as exc:
        log.warning("unsubscribe not counted", campaign_id=claim.campaign_id, error=repr(exc))


@limited_by_address("unsubscribe")
@operation("Unsubscribe with a signed token", body=UnsubscribeRequest, responses={200: UnsubscribeResult})
async def unsubscribe(request: Request) -> Response:
    """Switches off the channel a token was issued for; needs no API key, since the token is signed.

    400 for a malformed token, 403 for a forged, altered or mismatched one
    (``email`` and ``campaign_id``, when sent, must match the token). Doing
    it twice is harmless (``changed`` is then false).
    """
    body = await parse_body(request, UnsubscribeRequest)
    claim = _verify(request, body.token)
    if body.campaign_id is not None and body.campaign_id != claim.campaign_id:
        raise ApiError(
            403,
            "token_mismatch",
            f"this unsubscribe token was issued for campaign {claim.campaign_id}, not {body.campaign_id}",
            [FieldProblem(field="campaign_id", reason="does not match the token's campaign")],
        )
    try:
        before, after = await _unsubscribe(request, claim, "unsubscribe_api", body.reason, body.email)
    except UserNotFound:
        raise _not_found(claim.user_id) from None
    result = UnsubscribeResult(
        user_id=claim.user_id,
        channel=claim.channel,  # type: ignore[arg-type]
        campaign_id=claim.campaign_id,
        changed=before.enabled(claim.channel) != after.enabled(claim.channel),
    )
    return JSONResponse(result.model_dump(mode="json"))


_CHANNEL_WORDS = {"email": "emails", "sms": "text messages", "push": "push notifications", "in_app": "in-app messages"}
# /u/{token} answers a person's browser with a page, and a client that asks for JSON (Accept) with the error shape.
_PAGE_ERRORS = ("text/html", "application/json")
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never pass it on
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def _page(status: int, title: str, message: str, form: bool = False) -> HTMLResponse:
    button = (
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
        if form
        else ""
    )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
        "button{font-size:1rem;padding:.5rem 1.25rem}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{button}</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)


def _wants_json(request: Request) -> bool:
    """A client that asks for JSON and not for a page (a person's browser always accepts text/html)."""
    accept = request.headers.get("accept", "").lower()
    return "json" in accept and "text/html" not in accept


def _page_for_bad_token(request: Request) -> tuple[UnsubscribeClaim | None, HTMLResponse | None]:
    try:
        return _verify(request, request.path_params["token"]), None
    except ApiError as exc:
        if _wants_json(request):
            raise
        advice = "It may have been cut short or altered; use the link from the message itself."
        return None, _page(exc.status, "This unsubscribe link is not valid", advice)


@limited_by_address("unsubscribe")
@operation("Unsubscribe confirmation page", responses={200: "text/html"}, query=ANY_QUERY, errors=_PAGE_ERRORS)
async def one_click_page(request: Request) -> Response:
    """Asks before unsubscribing: mail scanners prefetch links, so a GET never changes anything."""
    claim, refused = _page_for_bad_token(request)
    if refused is not None:
        return refused
    assert claim is not None
    words = _CHANNEL_WORDS[claim.channel]
    return _page(200, f"Unsubscribe from {words}?", f"You will no longer receive {words} from us.", form=True)


@limited_by_address("unsubscribe")
@operation("One-click unsubscribe (RFC 8058)", responses={200: "text/html"}, query=ANY_QUERY, errors=_PAGE_ERRORS)
async def one_click_unsubscribe(request: Request) -> Response:
    """The POST a mail client sends for ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``.

    Any POST with a valid token unsubscribes, whatever its body: mail
    providers encode ``List-Unsubscribe=One-Click`` differently, and failing
    an opt-out over the encoding would be worse than honouring it.
    """
    claim, refused = _page_for_bad_token(request)
    if refused is not None:
        return refused
    assert claim is not None
    words = _CHANNEL_WORDS[claim.channel]
    try:
        await _unsubscribe(request, claim, "one_click")
    except UserNotFound:
        pass  # nobody left to write to: the person's wish holds either way
    except ApiError as exc:
        if _wants_json(request):
            raise
        return _page(exc.status, "Please try again", "We could not record your request just now.")
    return _page(200, "You are unsubscribed", f"You will no longer receive {words} from us.")


routes = [
    Route("/api/v1/users/{user_id:int}/preferences", get_preferences, methods=["GET"]),
    Route("/api/v1/users/{user_id:int}/preferences", patch_preferences, methods=["PATCH"]),
    Route("/api/v1/unsubscribe", unsubscribe, methods=["POST"]),
    Route("/u/{token}", one_click_page, methods=["GET"]),
    Route("/u/{token}", one_click_unsubscribe, methods=["POST"]),
]

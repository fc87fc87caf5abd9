"""Templates: CRUD, preview for a user or sample data, and one real test message through the channel.

    POST   /api/v1/templates                    admin, marketer   201 the template (+ estimated limits)
    GET    /api/v1/templates?channel=&cursor=   any role          newest first, a page at a time
    GET    /api/v1/templates/{id}               any role
    PATCH  /api/v1/templates/{id}               admin, marketer   a JSON merge patch (RFC 7396)
    DELETE /api/v1/templates/{id}               admin, marketer   409 while a live campaign uses it
    POST   /api/v1/templates/{id}/preview       any role          rendered parts + limit counts
    POST   /api/v1/templates/{id}/test-send     admin, marketer   one real message

The content rules (parts per channel, languages, variants, syntax, limits)
live in ``pipeline.content``; this module is the HTTP and PostgreSQL around
them. Every mutation and every test send is audited in its transaction.

A template's text may be given as ``parts`` or in the spec's table shape,
``subject`` and ``body`` (``pipeline.content.model.TABLE_FIELDS`` says which
part each is per channel: an email's body is its HTML). Answers always carry
``parts``.
"""

from __future__ import annotations

import re
import uuid
from email.utils import parseaddr
from typing import Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import paging
from api.auth import ROLES, require_role
from api.errors import ApiError, FieldProblem, invalid, parse_body, read_json
from api.openapi import NO_BODY, PAGED, STR, operation
from pipeline import audit
from pipeline.channels import Message, open_channel
from pipeline.content.store import COLUMNS, template_record
from pipeline.email_footer import with_footer
from pipeline.content.validate import (
    all_texts,
    content_problems,
    estimated_limits,
    normalize_parts,
    table_shape_parts,
)
from pipeline.pii import CONTACT_COLUMNS, contact_of
from pipeline.templates import (
    CHANNELS,
    TABLE_FIELDS,
    SAMPLE_PROFILE,
    RenderError,
    TemplateContent,
    campaign_variables,
    check_limits,
    compiled_template,
    get_template,
    message_variables,
    resolve_parts,
    unresolved_variables,
)
from schemas.encoding import BIGINT_MAX

__all__ = ["get_template", "routes"]

Channel = Literal["email", "sms", "push", "in_app", "webhook"]
EDITORS = ("admin", "marketer")
_EDITABLE = ("name", "description", "category", "parts", "default_language", "translations", "variants")
_TABLE_SHAPE = ("subject", "body")  # the spec's templates table: mapped onto parts
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_USER_COLUMNS = f"user_id, {CONTACT_COLUMNS}, first_name, last_name, country, language, timezone, attributes, push_tokens"


class NewTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    channel: Channel
    description: str | None = Field(default=None, max_length=2000)
    category: str | None = Field(
        default=None, pattern=r"^[a-z0-9_-]{1,50}$", description="e.g. promotional, transactional"
    )
    parts: dict[str, Any] | None = Field(
        default=None,
        description="email: subject, html, text; sms: body; push: title, body, action_url, image_url; "
                    "in_app: title, body, action_url, image_url; webhook: payload. Or give subject and body instead",
    )
    subject: str | None = Field(default=None, description="the spec's table shape: email subject, push/in-app title")
    body: str | dict[str, Any] | list[Any] | None = Field(
        default=None, description="the spec's table shape: email html (text made from it), sms/push/in-app body, "
                                  "webhook payload",
    )
    default_language: str = Field(default="en", max_length=10)
    translations: dict[str, dict[str, Any]] = Field(default_factory=dict, description="language -> parts")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="variant -> parts overrides, with optional translations: {language: parts}"
    )


class TemplatePatch(BaseModel):
    """A JSON merge patch (RFC 7396) of a template: objects merge, null removes a key."""

    name: str | None = None
    description: str | None = None
    category: str | None = None
    parts: dict[str, Any] | None = None
    subject: str | None = Field(default=None, description="the spec's table shape, patching the part it maps to")
    body: str | dict[str, Any] | list[Any] | None = Field(default=None, description="likewise")
    default_language: str | None = None
    translations: dict[str, Any] | None = None
    variants: dict[str, Any] | None = None


class TemplateView(BaseModel):
    template_id: int
    name: str
    description: str | None
    channel: Channel
    category: str | None
    parts: dict[str, str]
    default_language: str
    translations: dict[str, dict[str, str]]
    variants: dict[str, dict[str, Any]]
    variables: list[str] = Field(description="campaign variables the text reads (profile fields excluded)")
    created_by: int | None
    created_at: str
    updated_at: str
    estimated_limits: dict[str, Any] | None = Field(
        default=None, description="on create and update: counts of the default version with a sample profile"
    )


class TemplateList(BaseModel):
    templates: list[TemplateView]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int | None = Field(default=None, gt=0, le=BIGINT_MAX, description="render for this stored user")
    sample: dict[str, Any] | None = Field(default=None, description="or for this profile (first_name, attributes...)")
    language: str | None = Field(default=None, max_length=35, description="default: the user's language")
    variant: str | None = Field(default=None, max_length=32)
    variables: dict[str, Any] = Field(default_factory=dict, description="campaign variables")


class Preview(BaseModel):
    template_id: int
    channel: Channel
    user_id: int | None
    language: str
    variant: str | None = Field(description="the variant whose text was used; null for the control text")
    parts: dict[str, str]
    limits: dict[str, Any]


class TestSendRequest(PreviewRequest):
    to: str | None = Field(
        default=None, min_length=1, max_length=2048,
        description="address, E.164 number, device token, user id (in_app) or URL (webhook); "
                    "default: the user's own for email, sms, push and in_app",
    )


class TestSendResult(BaseModel):
    status: Literal["sent"]
    channel: Channel
    to: str
    message_id: str
    provider_id: str | None
    language: str
    variant: str | None
    parts: dict[str, str]


# ---------------------------------------------------------------- helpers


def _invalid(problems: list[tuple[str, str]]) -> ApiError:
    names = ", ".join(dict.fromkeys(f for f, _ in problems))
    first = f"{problems[0][0]}: {problems[0][1]}"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ApiError(422, "validation_error", f"invalid value for {names}: {first}{more}",
                    fields=[FieldProblem(field=f, reason=r) for f, r in problems])


def _template_id(request: Request) -> int:
    template_id = request.path_params["template_id"]
    if not 0 < template_id <= BIGINT_MAX:
        raise ApiError(404, "not_found", f"no template {template_id}")
    return template_id


def _without_nulls(value: Any) -> Any:
    """A part given as null is no part (as in a merge patch)."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def _content(body: dict[str, Any]) -> TemplateContent:
    return TemplateContent(
        channel=body["channel"],
        parts=body["parts"],
        default_language=body["default_language"],
        translations=body["translations"],
        variants=body["variants"],
    )


def _table_shape(channel: str, given: dict[str, Any], parts_given: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """``subject`` / ``body`` as the channel's parts (422 naming a field the channel lacks, or both shapes at once),
    with the part each came from named back to its field for later problems ("parts.html" -> "body")."""
    parts, problems = table_shape_parts(channel, given, parts_given)
    if problems:
        raise _invalid(problems)
    return parts, {f"parts.{TABLE_FIELDS[channel][name]}": name for name in given}


def _from_table_shape(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A new template's body with its text as ``parts`` whichever shape it came in."""
    given = {name: body.pop(name) for name in _TABLE_SHAPE if body.get(name) is not None}
    for name in _TABLE_SHAPE:
        body.pop(name, None)
    if not given:
        if body["parts"] is None:
            raise _invalid([("parts", "required: the channel's parts, or subject and body as in the spec")])
        return body, {}
    body["parts"], aliases = _table_shape(body["channel"], given, body["parts"] is not None)
    return body, aliases


def _checked(body: dict[str, Any], aliases: dict[str, str] | None = None) -> tuple[dict[str, Any], TemplateContent]:
    """Normalize webhook payload objects, then 422 with every content problem, or the content to store.

    ``aliases`` names a part by the field it was given as (``parts.html`` -> ``body``).
    """
    channel = body["channel"]
    body["parts"] = normalize_parts(channel, _without_nulls(body["parts"]))
    body["translations"] = {k: normalize_parts(channel, _without_nulls(v)) for k, v in body["translations"].items()}
    body["variants"] = {k: normalize_parts(channel, _without_nulls(v)) for k, v in body["variants"].items()}
    content = _content(body)
    problems = content_problems(content)
    if problems:
        raise _invalid([((aliases or {}).get(field, field), reason) for field, reason in problems])
    return body, content


def _without_table_shape(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _TABLE_SHAPE}


def _mirror(channel: str, parts: dict[str, str]) -> tuple[str | None, str]:
    """The legacy subject/body columns (001_init.sql) kept in step with the parts."""
    subject = parts.get("subject") if channel == "email" else parts.get("title")
    body = parts.get("payload") if channel == "webhook" else parts.get("html") or parts.get("text") or parts.get("body")
    return (subject[:500] if subject else None), body or ""


def _view(record: dict[str, Any], limits: dict[str, Any] | None = None) -> dict[str, Any]:
    view = TemplateView(**record, estimated_limits=limits).model_dump(mode="json")
    if limits is None:
        view.pop("estimated_limits")
    return view


def _j(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _store(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    return template_record(await conn.fetchrow(sql, *args))


# ---------------------------------------------------------------- CRUD


@require_role(*EDITORS)
@operation("Create a template", body=NewTemplate, responses={201: TemplateView})
async def create_template(request: Request) -> Response:
    """Stores a channel's content (parts, translations, A/B variants) after checking syntax and channel limits.

    The text comes as ``parts`` or, as in the spec, as ``subject`` and ``body``
    (not both). The answer gives it as ``parts``, lists the campaign variables
    the text reads and the limit counts of the default version rendered with a
    sample profile.
    """
    new = await parse_body(request, NewTemplate)
    body, content = _checked(*_from_table_shape(new.model_dump()))
    subject, main = _mirror(body["channel"], body["parts"])
    variables = campaign_variables(all_texts(content))
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        record = await _store(
            conn,
            "INSERT INTO templates (name, description, channel, category, parts, default_language, translations,"
            " variants, variables, subject, body, created_by)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10, $11, $12)"
            f" RETURNING {COLUMNS}",
            body["name"], body["description"], body["channel"], body["category"], _j(body["parts"]),
            body["default_language"], _j(body["translations"]), _j(body["variants"]), _j(variables), subject, main,
            request.state.caller.key_id,
        )
        await audit.record(
            conn, request.state.caller, "template.created", "template", record["template_id"], None, record
        )
    return JSONResponse(_view(record, estimated_limits(content)), status_code=201)


@require_role(*ROLES)
@operation("Get a template", responses={200: TemplateView})
async def get_template_endpoint(request: Request) -> Response:
    """The template with its parts, translations, variants and the campaign variables it reads."""
    template_id = _template_id(request)
    record = await get_template(request.app.state.postgres, template_id)
    if record is None:
        raise ApiError(404, "not_found", f"no template {template_id}")
    return JSONResponse(_view(record))


def encode_cursor(last_id: int) -> str:
    return paging.encode_cursor("t1", last_id)


def decode_cursor(cursor: str) -> int:
    last_id = paging.decode_cursor("t1", cursor)
    if last_id is None:
        raise _invalid([("cursor", "not a cursor this API returned")])
    return last_id


@require_role(*ROLES)
@operation("List templates", responses={200: TemplateList}, query={"channel": STR, **PAGED})
async def list_templates(request: Request) -> Response:
    """Newest first, ``limit`` (1 to 200, default 50) at a time, optionally one ``channel``; ``cursor`` pages on."""
    q = request.query_params
    problems = [(name, "unknown query parameter") for name in q if name not in ("channel", "limit", "cursor")]
    channel = q.get("channel")
    if channel is not None and channel not in CHANNELS:
        problems.append(("channel", f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}"))
    limit = paging.page_limit(q, problems)
    if problems:
        raise _invalid(problems)
    before = decode_cursor(q["cursor"]) if "cursor" in q else None
    rows = await request.app.state.postgres.fetch(
        f"SELECT {COLUMNS} FROM templates WHERE ($1::text IS NULL OR channel = $1)"
        " AND ($2::bigint IS NULL OR template_id < $2) ORDER BY template_id DESC LIMIT $3",
        channel, before, limit + 1,
    )
    page = [template_record(r) for r in rows[:limit]]
    next_cursor = encode_cursor(page[-1]["template_id"]) if len(rows) > limit else None
    return JSONResponse({"templates": [_view(r) for r in page], "next_cursor": next_cursor})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


@require_role(*EDITORS)
@operation("Change a template", body=TemplatePatch, responses={200: TemplateView})
async def update_template(request: Request) -> Response:
    """Changes a template with a JSON merge patch: objects (parts, translations, variants) merge, null removes.

    ``{"parts": {"subject": "New"}, "translations": {"de": null}}`` changes the
    subject and drops the German translation. The channel cannot change. The
    result is checked as a whole, like a new template. Campaigns that use the
    template render the new text from their next message on.
    """
    template_id = _template_id(request)
    patch = await read_json(request)
    if not isinstance(patch, dict):
        raise _invalid([("(body)", "a JSON object (a merge patch)")])
    problems = [(k, "cannot be changed; create a new template for another channel") for k in patch if k == "channel"]
    problems += [(k, "unknown field") for k in patch if k not in (*_EDITABLE, *_TABLE_SHAPE) and k != "channel"]
    if problems:
        raise _invalid(problems)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM templates WHERE template_id = $1 FOR UPDATE", template_id)
        if row is None:
            raise ApiError(404, "not_found", f"no template {template_id}")
        before = template_record(row)
        given = {name: patch.pop(name) for name in _TABLE_SHAPE if name in patch}
        aliases: dict[str, str] = {}
        if given:  # the spec's shape patches the parts it maps to (null removes, as in parts)
            parts, aliases = _table_shape(before["channel"], given, "parts" in patch)
            patch["parts"] = parts
        merged = merge_patch({k: before[k] for k in (*_EDITABLE, "channel")}, patch)
        for key in ("parts", "translations", "variants"):
            merged.setdefault(key, {})
        merged.setdefault("default_language", "en")
        try:
            new = NewTemplate.model_validate(merged)
        except ValidationError as exc:
            raise invalid(exc) from None
        body, content = _checked(_without_table_shape(new.model_dump()), aliases)
        subject, main = _mirror(body["channel"], body["parts"])
        after = await _store(
            conn,
            "UPDATE templates SET name = $2, description = $3, category = $4, parts = $5::jsonb, default_language = $6,"
            " translations = $7::jsonb, variants = $8::jsonb, variables = $9::jsonb, subject = $10, body = $11,"
            f" updated_at = now() WHERE template_id = $1 RETURNING {COLUMNS}",
            template_id, body["name"], body["description"], body["category"], _j(body["parts"]),
            body["default_language"], _j(body["translations"]), _j(body["variants"]),
            _j(campaign_variables(all_texts(content))), subject, main,
        )
        await audit.record(conn, request.state.caller, "template.updated", "template", template_id, before, after)
    return JSONResponse(_view(after, estimated_limits(content)))


@require_role(*EDITORS)
@operation("Delete a template", responses={204: NO_BODY})
async def delete_template(request: Request) -> Response:
    """Deletes a template no live campaign uses: 409 names the draft, scheduled, active or paused campaigns that do."""
    template_id = _template_id(request)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM templates WHERE template_id = $1 FOR UPDATE", template_id)
        if row is None:
            raise ApiError(404, "not_found", f"no template {template_id}")
        users = await conn.fetch(
            "SELECT campaign_id, status FROM campaigns WHERE lower(status) NOT IN ('completed', 'cancelled')"
            " AND jsonb_path_exists(content, 'lax $.** ? (@.template_id == $id || @.template_id == $sid)',"
            " jsonb_build_object('id', $1::bigint, 'sid', $1::text)) ORDER BY campaign_id LIMIT 20",
            template_id,
        )
        if users:
            named = ", ".join(f"{r['campaign_id']} ({r['status']})" for r in users)
            raise ApiError(409, "conflict", f"template {template_id} is used by campaign(s) {named}; "
                                            "finish, cancel or change them first")
        await conn.execute("DELETE FROM templates WHERE template_id = $1", template_id)
        await audit.record(conn, request.state.caller, "template.deleted", "template", template_id,
                           template_record(row), None)
    return Response(status_code=204)


# ---------------------------------------------------------------- preview and test-send


async def _load(request: Request) -> dict[str, Any]:
    template_id = _template_id(request)
    record = await get_template(request.app.state.postgres, template_id)
    if record is None:
        raise ApiError(404, "not_found", f"no template {template_id}")
    return record


async def _profile(request: Request, ask: PreviewRequest) -> dict[str, Any]:
    if ask.user_id is not None and ask.sample is not None:
        raise _invalid([("sample", "give user_id or sample, not both")])
    if ask.sample is not None:
        return {**SAMPLE_PROFILE, **ask.sample}
    if ask.user_id is None:
        return dict(SAMPLE_PROFILE)
    row = await request.app.state.postgres.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1", ask.user_id
    )
    if row is None:
        raise ApiError(404, "not_found", f"no user {ask.user_id}")
    profile = dict(row)
    profile["email"], profile["phone"] = contact_of(request.app.state.pii, row)
    del profile["email_enc"], profile["phone_enc"]
    for key in ("attributes", "push_tokens"):
        if isinstance(profile[key], str):
            profile[key] = orjson.loads(profile[key])
    return profile


def _render(request: Request, record: dict[str, Any], ask: PreviewRequest, profile: dict[str, Any], message_id: str):
    """Render for ``profile``; 422 naming each campaign variable that has no value, or the part that fails."""
    content = TemplateContent.from_record(record)
    if ask.variant is not None and ask.variant not in content.variants:
        known = ", ".join(content.variants) or "none"
        raise _invalid([("variant", f"the template has no variant {ask.variant!r}; its variants: {known}")])
    language = ask.language or profile.get("language")
    parts, _, _ = resolve_parts(content, language, ask.variant)
    missing = unresolved_variables(parts, ask.variables)
    if missing:
        raise _invalid([(f"variables.{name}", "the template uses it and no value was given") for name in missing])
    system = {
        "message_id": message_id,
        "variant": ask.variant or "A",
        "unsubscribe_url": _preview_unsubscribe_url(request.app.state.settings),
    }
    try:
        variables = message_variables(profile, ask.variables, system)
        return compiled_template(record).render(variables, language, ask.variant)
    except RenderError as exc:
        raise _invalid([(exc.part, f"cannot be rendered: {exc.reason}")]) from None


@require_role(*ROLES)
@operation("Preview a template", body=PreviewRequest, responses={200: Preview})
async def preview_template(request: Request) -> Response:
    """Renders the template for a stored user (``user_id``) or sample data, with counts against the channel's limits.

    Language and variant are chosen as for a real send (the user's language,
    falling back to the template's default); limit problems are reported in
    ``limits.problems`` rather than refused, so the text can be fixed.
    """
    record = await _load(request)
    ask = await parse_body(request, PreviewRequest)
    profile = await _profile(request, ask)
    rendered = _render(request, record, ask, profile, "preview")
    return JSONResponse(Preview(
        template_id=record["template_id"], channel=record["channel"], user_id=ask.user_id,
        language=rendered.language, variant=rendered.variant, parts=rendered.parts,
        limits=check_limits(record["channel"], rendered.parts).as_dict(),
    ).model_dump(mode="json"))


def _recipient(channel: str, to: str | None, profile: dict[str, Any], user_id: int | None) -> str:
    """Where the test goes: ``to``, else the user's own address for the channel; 422 if neither fits."""
    if to is None and user_id is not None:
        tokens = profile.get("push_tokens") or []
        to = {"email": profile.get("email"), "sms": profile.get("phone"), "push": tokens[0] if tokens else None,
              "in_app": str(user_id)}.get(channel)
    if not to:
        raise _invalid([("to", "required: where to send the test (or a user_id whose profile has an address)")])
    to = to.strip()
    if channel == "email":
        name, address = parseaddr(to)
        if not address or "@" not in address or not address.isascii() or " " in address:
            raise _invalid([("to", "an email address")])
    elif channel == "sms" and not _E164.fullmatch(to):
        raise _invalid([("to", "a phone number in E.164 form, such as +14155550123")])
    elif channel == "push" and (any(c.isspace() for c in to) or len(to) < 8):
        raise _invalid([("to", "a device registration token")])
    elif channel == "in_app" and not (to.isdigit() and 0 < int(to) <= BIGINT_MAX):
        raise _invalid([("to", "a user id")])
    elif channel == "webhook" and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", to):
        raise _invalid([("to", "an http(s) URL")])
    return to


def _preview_unsubscribe_url(settings) -> str:
    return f"{settings.public_url}/unsubscribe?preview=1"


@require_role(*EDITORS)
@operation("Send one test message", body=TestSendRequest, responses={200: TestSendResult})
async def test_send(request: Request) -> Response:
    """Renders the template (as preview does) and sends ONE real message through the channel's provider.

    A provider that refuses the recipient (bad address, invalid number,
    unregistered token) is a 422 on ``to``; a provider that fails or refuses
    for another reason is a 502 with its answer.
    """
    record = await _load(request)
    ask = await parse_body(request, TestSendRequest)
    profile = await _profile(request, ask)
    channel = record["channel"]
    to = _recipient(channel, ask.to, profile, ask.user_id)
    message_id = f"test-{uuid.uuid4()}"
    rendered = _render(request, record, ask, profile, message_id)
    problems = check_limits(channel, rendered.parts).problems
    if problems:
        raise _invalid([(f"parts.{part}", reason) for part, reason in problems])
    settings = request.app.state.settings
    parts = rendered.parts
    if channel == "email":  # as every campaign email ends (pipeline/email_footer.py), with the preview's link
        parts = with_footer(parts, settings.sender_postal_address, _preview_unsubscribe_url(settings))
    message = Message(channel=channel, to=to, parts=parts, message_id=message_id,
                      user_id=ask.user_id, headers={"X-Herald-Test-Send": "1"} if channel == "email" else {})
    async with open_channel(channel, settings, redis=request.app.state.redis) as adapter:
        result = await adapter.send(message)
    async with request.app.state.postgres.acquire() as conn, conn.transaction():
        await audit.record(conn, request.state.caller, "template.test_sent", "template", record["template_id"], None,
                           {"channel": channel, "to": to, "message_id": message_id, "outcome": result.outcome,
                            "provider_id": result.provider_id, "reason": result.reason or None})
    if result.outcome == "permanent" and result.recipient_problem:
        raise ApiError(422, "recipient_rejected", f"the {channel} provider refused {to}: {result.reason}",
                       fields=[FieldProblem(field="to", reason=result.reason)])
    if result.outcome == "permanent":
        raise ApiError(502, "provider_rejected", f"the {channel} provider refused the message: {result.reason}")
    if result.outcome == "transient":
        raise ApiError(502, "provider_unavailable", f"the {channel} provider did not take the message "
                                                    f"(worth retrying): {result.reason}")
    return JSONResponse(TestSendResult(
        status="sent", channel=channel, to=to, message_id=message_id, provider_id=result.provider_id,
        language=rendered.language, variant=rendered.variant, parts=parts,
    ).model_dump(mode="json"))


routes = [
    Route("/api/v1/templates", create_template, methods=["POST"]),
    Route("/api/v1/templates", list_templates, methods=["GET"]),
    Route("/api/v1/templates/{template_id:int}", get_template_endpoint, methods=["GET"]),
    Route("/api/v1/templates/{template_id:int}", update_template, methods=["PATCH"]),
    Route("/api/v1/templates/{template_id:int}", delete_template, methods=["DELETE"]),
    Route("/api/v1/templates/{template_id:int}/preview", preview_template, methods=["POST"]),
    Route("/api/v1/templates/{template_id:int}/test-send", test_send, methods=["POST"]),
]

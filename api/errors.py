"""One error shape for every 4xx and 5xx the API returns.

    {"error": {"status": 422, "code": "validation_error", "message": "...",
               "fields": [{"field": "role", "reason": "..."}]}}

Clients (the dashboard, scripts, upstream systems) handle failures with one
parser instead of one per endpoint, and "fields" points a form at the input to
fix. Handlers raise ``ApiError``; Starlette's own 404 and 405, malformed JSON,
pydantic validation and unexpected exceptions are translated here, so no other
module builds an error response by hand.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import structlog
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match, Route

from api import inputs
from schemas.encoding import BIGINT_MAX

log = structlog.get_logger("herald.api")

Model = TypeVar("Model", bound=BaseModel)

# Codes for statuses that Starlette raises itself; handlers pick their own.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
}


class FieldProblem(BaseModel):
    field: str
    reason: str


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    fields: list[FieldProblem] | None = None


class ErrorBody(BaseModel):
    """The body of every error response (documented in the OpenAPI schema)."""

    error: ErrorDetail


class ApiError(Exception):
    """Raised by handlers to answer with the shared error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers


def error_response(error: ApiError) -> JSONResponse:
    detail = ErrorDetail(status=error.status, code=error.code, message=error.message, fields=error.fields)
    return JSONResponse(
        {"error": detail.model_dump(exclude_none=True)},
        status_code=error.status,
        headers=error.headers,
    )


def field_problems(exc: ValidationError) -> list[FieldProblem]:
    """Pydantic's errors as dotted paths ("content.email.subject", "variants.0.weight")."""
    return [
        FieldProblem(field=".".join(str(part) for part in problem["loc"]) or "(body)", reason=problem["msg"])
        for problem in exc.errors(include_url=False)
    ]


def invalid(exc: ValidationError) -> ApiError:
    problems = field_problems(exc)
    names = ", ".join(dict.fromkeys(p.field for p in problems))
    return ApiError(422, "validation_error", f"invalid value for {names}", fields=problems)


def problems_error(problems: list[tuple[str, str]]) -> ApiError:
    """A 422 naming each field and why (``problems`` as ``api.inputs`` reports them)."""
    names = ", ".join(dict.fromkeys(field for field, _ in problems))
    return ApiError(422, "validation_error", f"invalid value for {names}",
                    fields=[FieldProblem(field=field, reason=reason) for field, reason in problems])


def _json_media_type(request: Request) -> None:
    """415 unless the body is declared JSON (``application/json`` or ``application/*+json``; none is read as JSON)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       f"this endpoint takes an application/json body, not {media or 'an empty Content-Type'}")


def _json_depth(request: Request) -> int:
    settings = getattr(request.app.state, "settings", None)  # an app built without settings (unit tests) too
    return settings.api_max_json_depth if settings is not None else inputs.DEFAULT_JSON_DEPTH


async def read_json(request: Request) -> Any:
    """The request's JSON body, checked by ``api.inputs``: 415 if not declared JSON, 400 if not JSON, 422 if it
    carries a NUL character, an integer beyond 64 bits or nesting deeper than ``api_max_json_depth``."""
    _json_media_type(request)
    raw = await request.body()
    try:
        data, problems = inputs.load_json(raw, _json_depth(request))
    except inputs.BadJson as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if problems:
        raise problems_error(problems)
    return data


async def read_form(request: Request, max_fields: int = 200) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as (name, value) pairs, in order (provider webhooks post forms):
    415 if declared as anything else, 400 if it does not parse, 422 naming a field whose text carries a NUL."""
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/x-www-form-urlencoded":
        raise ApiError(415, "unsupported_media_type", "the body must be application/x-www-form-urlencoded")
    body = await request.body()
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_form", "the body is not a URL-encoded form") from None
    problems = inputs.text_problems(pairs)
    if problems:
        raise problems_error(problems)
    return pairs


async def parse_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body (``read_json``) as ``model``: 422 if it does not fit."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _allowed_methods(request: Request) -> str:
    """Methods of every route on this path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    status, message, headers = exc.status_code, exc.detail, exc.headers
    if status == 404 and "route" not in request.scope:
        message = f"no such route: {request.method} {request.url.path}"
    elif status == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
    code = _CODES.get(status) or re.sub(r"[^a-z0-9]+", "_", HTTPStatus(status).phrase.lower())
    return error_response(ApiError(status, code, message, headers=headers))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return error_response(invalid(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log, never to the client: it can name tables, hosts and keys.
    log.error("unhandled exception", method=request.method, path=request.url.path, exc_info=exc)
    return error_response(ApiError(500, "internal_error", "internal server error; the details are in the server log"))


exception_handlers = {
    ApiError: _api_error,
    HTTPException: _http_exception,
    ValidationError: _validation_error,
    Exception: _unexpected,
}


def user_id_path(request: Request) -> int:
    """The ``{user_id:int}`` of the path, a PostgreSQL bigint (422 naming ``user_id`` otherwise)."""
    user_id = request.path_params["user_id"]
    if not 0 < user_id <= BIGINT_MAX:
        raise ApiError(422, "validation_error", "the user id is out of range",
                       fields=[FieldProblem(field="user_id", reason=f"between 1 and {BIGINT_MAX}")])
    return user_id

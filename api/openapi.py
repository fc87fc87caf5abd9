"""``GET /api/v1/openapi.json``: the API described from its own routes.

Each endpoint states its summary, body model and response models with
``@operation``; the rest is derived, so the document cannot drift from the
code: paths and path parameters from the ``Route``, the description from the
docstring's first paragraph, bearer security and the 401/403 answers from
``require_role``, the 429 answer from ``require_role`` and ``limited_by_address``
(api/ratelimit.py), and the component schemas from the pydantic models.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from api import inputs
from api.errors import ErrorBody, problems_error

F = TypeVar("F", bound=Callable[..., Any])
_CONVERTER = re.compile(r":\w+}")


# Query parameters most list endpoints share (api/paging.py).
LIMIT = {"type": "integer", "minimum": 1, "maximum": 200, "description": "Page size (default 50)"}
CURSOR = {"type": "string", "minLength": 1, "description": "next_cursor of the previous page; leave out for the first"}
PAGED = {"limit": LIMIT, "cursor": CURSOR}
STR = {"type": "string"}
# The answer of a status with no body (204 No Content).
NO_BODY = ""
# The query of an endpoint that takes any, unchecked: a provider's callback (the provider signs the URL as it
# was set up) and the links people follow from a message (link scanners and mail clients append their own).
ANY_QUERY = None


@dataclass(frozen=True)
class Operation:
    summary: str
    body: type[BaseModel] | None = None
    # status -> a response model, or a media type for non-JSON answers (/metrics), or NO_BODY
    responses: dict[int, type[BaseModel] | str] = field(default_factory=dict)
    # name -> JSON schema of each query parameter the endpoint takes (None: any, not checked)
    query: dict[str, dict[str, Any]] | None = field(default_factory=dict)
    # the media types of the error answers, when not only the JSON error shape (/u/{token}: HTML to a browser,
    # the error shape to a client asking for JSON)
    errors: tuple[str, ...] = ("application/json",)


def operation(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | str] | None = None,
    query: Mapping[str, dict[str, Any]] | None = MappingProxyType({}),
    errors: tuple[str, ...] = ("application/json",),
) -> Callable[[F], F]:
    """Describe an endpoint for the OpenAPI document (put it under ``require_role``).

    ``query`` names every query parameter the endpoint takes: any other, a NUL
    character, an empty ``cursor`` or a ``limit`` not in ASCII digits gets 422
    before the endpoint runs (``api.inputs.query_problems``), one rule for all.
    """

    def attach(endpoint: F) -> F:
        op = Operation(summary, body, responses or {}, None if query is None else dict(query), errors)
        if op.query is None:
            endpoint.openapi = op  # type: ignore[attr-defined]
            return endpoint
        allowed = tuple(op.query)

        @functools.wraps(endpoint)
        async def checked(request: Request) -> Response:
            problems = inputs.query_problems(request.query_params.multi_items(), allowed)
            if problems:
                raise problems_error(problems)
            return await endpoint(request)

        checked.openapi = op  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return attach


def _param_schema(convertor: object) -> dict[str, Any]:
    if isinstance(convertor, (IntegerConvertor, inputs.Int64Convertor)):
        return {"type": "integer", "minimum": 0, "maximum": inputs.INT64_MAX}
    return {"type": "number"} if isinstance(convertor, FloatConvertor) else {"type": "string"}


def _description(endpoint: Callable[..., Any]) -> str:
    return inspect.cleandoc(endpoint.__doc__ or "").split("\n\n")[0]


def build_document(routes: list[BaseRoute]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for every ``Route`` in ``routes``."""
    found = [r for r in routes if isinstance(r, Route) and r.include_in_schema]
    docs = {id(r): getattr(r.endpoint, "openapi", None) or Operation(r.name.replace("_", " ")) for r in found}

    models = {(ErrorBody, "serialization")}
    for op in docs.values():
        if op.body:
            models.add((op.body, "validation"))
        models |= {(m, "serialization") for m in op.responses.values() if not isinstance(m, str)}
    refs, defs = models_json_schema(
        sorted(models, key=lambda m: m[0].__name__), ref_template="#/components/schemas/{model}"
    )

    def content(answer: type[BaseModel] | str, mode: str) -> dict[str, Any]:
        if isinstance(answer, str):
            return {answer: {"schema": {"type": "object" if answer == "application/json" else "string"}}}
        return {"application/json": {"schema": refs[(answer, mode)]}}

    paths: dict[str, dict[str, Any]] = {}
    for route in found:
        op = docs[id(route)]
        if op.errors == ("application/json",):
            error: dict[str, Any] = {"$ref": "#/components/responses/Error"}
        else:
            kinds = [content(ErrorBody if m == "application/json" else m, "serialization") for m in op.errors]
            error = {"description": "Any 4xx or 5xx: the JSON error shape to a client asking for JSON",
                     "content": {k: v for kind in kinds for k, v in kind.items()}}
        roles = getattr(route.endpoint, "roles", None)
        responses: dict[str, Any] = {
            str(status): {"description": HTTPStatus(status).phrase, "content": content(answer, "serialization")}
            if answer != NO_BODY else {"description": HTTPStatus(status).phrase}
            for status, answer in op.responses.items()
        } or {"200": {"description": "OK"}}
        if op.body:
            responses |= {"400": error, "413": error, "415": error, "422": error}
        if op.query:
            responses |= {"422": error}
        if route.param_convertors:
            responses |= {"404": error}
        if roles:
            responses |= {"401": error, "403": error}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _param_schema(convertor)}
            for name, convertor in route.param_convertors.items()
        ]
        parameters += [{"name": name, "in": "query", "required": False, "schema": schema}
                       for name, schema in (op.query or {}).items()]
        if roles or getattr(route.endpoint, "rate_limited", False):
            responses |= {"429": {"$ref": "#/components/responses/RateLimited"}}
        operation = {
            "summary": op.summary,
            "description": _description(route.endpoint),
            "operationId": route.name,
            "parameters": parameters,
            "responses": responses | {"default": error},
            "security": [{"bearer": []}] if roles else [],
        }
        if roles:
            operation["x-roles"] = list(roles)
        if op.body:
            operation["requestBody"] = {"required": True, "content": content(op.body, "validation")}
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(_CONVERTER.sub("}", route.path), {})[method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": "Herald", "version": "0.1.0", "description": "Real-time, multi-channel campaign engine."},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "responses": {
                "Error": {
                    "description": "Any 4xx or 5xx, in one shape",
                    "content": {"application/json": {"schema": refs[(ErrorBody, "serialization")]}},
                },
                "RateLimited": {  # api/ratelimit.py: per API key, or per client address on public routes
                    "description": "Too Many Requests: over the rate limit; try again after Retry-After seconds",
                    "headers": {name: {"schema": {"type": "integer"}} for name in
                                ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")},
                    "content": {"application/json": {"schema": refs[(ErrorBody, "serialization")]}},
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: hk_<prefix>_<secret>"}
            },
        },
    }


@operation("This document", responses={200: "application/json"})
async def openapi_json(request: Request) -> Response:
    """Lets client generators and the dashboard discover every route; needs no key."""
    state = request.app.state
    if getattr(state, "openapi_document", None) is None:  # routes are fixed once the app is built
        state.openapi_document = build_document(request.app.routes)
    return JSONResponse(state.openapi_document)


routes = [Route("/api/v1/openapi.json", openapi_json, methods=["GET"])]

"""The one place where request input is checked before any handler sees it.

Every JSON body (``api.errors.parse_body``/``read_json``) and every query
string (``check_query``) passes through here, so each class of bad input is
refused once, for every endpoint, old and new:

- a NUL character in any text (PostgreSQL's text and jsonb cannot hold one);
- an integer beyond 64 bits (ids, cursors, ``exclude_segments``: PostgreSQL's
  bigint and Cassandra's bigint stop there), or a number such as ``1e19`` that
  would become one in an integer field;
- free-form JSON nested deeper than ``api_max_json_depth`` (goals, triggers,
  content variables, webhook payloads are stored and walked recursively);
- non-finite numbers (``NaN``, ``1e400``), which JSON has no spelling for;
- ``limit`` written with anything but ASCII digits (``int('²')`` raises);
- query parameters an endpoint does not take, and an empty ``cursor=``.

Problems are ``(field, reason)`` pairs, as ``api.errors`` turns them into 422s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.exceptions import HTTPException

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NUL = "\x00"
DEFAULT_JSON_DEPTH = 32  # config.Settings.api_max_json_depth

Problem = tuple[str, str]


class BadJson(ValueError):
    """The body is not JSON at all (answered 400 malformed_json)."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"the number {text[:40]} is too large for a double")
    return value


def _no_constant(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def load_json(raw: bytes, max_depth: int) -> tuple[Any, list[Problem]]:
    """The parsed body and what is wrong with its values; ``BadJson`` if it does not parse.

    The standard library's parser keeps integers exact (orjson turns one past
    64 bits into a float, which would then pass an ``int`` field rounded).
    """
    try:
        data = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        return None, [("(body)", f"JSON nested deeper than {max_depth} levels")]
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError and BadJson are ValueErrors
        raise BadJson(str(exc)) from None
    return data, json_problems(data, max_depth)


def _path(parts: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in parts) or "(body)"


def json_problems(data: Any, max_depth: int) -> list[Problem]:
    """NUL characters, integers beyond 64 bits and nesting past ``max_depth`` anywhere in ``data``.

    Depth counts containers: ``{"goals": {}}`` is 2 deep. Walks with its own
    stack, so a hostile document cannot exhaust Python's recursion limit here.
    """
    problems: list[Problem] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if NUL in value:
                problems.append((_path(path), "text may not contain a NUL character"))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                problems.append((_path(path), "an integer beyond 64 bits"))
        elif isinstance(value, float):
            # 1e19 passes an int field as 10000000000000000000 (pydantic takes whole floats), so no number may
            # leave the 64-bit range, whichever way it is written.
            if not INT64_MIN <= value <= INT64_MAX:
                problems.append((_path(path), "a number beyond the 64-bit range"))
        elif isinstance(value, (dict, list)):
            if len(path) >= max_depth:
                # Name the field the client wrote (its top-level name), not a path hundreds of levels long.
                problems.append((_path(path[:1]), f"JSON nested deeper than {max_depth} levels"))
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and NUL in key:
                    problems.append((_path((*path, key.replace(NUL, "\\u0000"))),
                                     "a key may not contain a NUL character"))
                    continue
                stack.append((item, (*path, key)))
    return sorted(dict.fromkeys(problems))


def text_problems(values: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[Problem]:
    """NUL characters in form or query text, named by field."""
    pairs = values.items() if isinstance(values, Mapping) else values
    return [(name.replace(NUL, "\\u0000"), "text may not contain a NUL character")
            for name, value in pairs if NUL in name or NUL in value]


def ascii_int(raw: str) -> int | None:
    """``raw`` as an integer if written in ASCII digits within 64 bits, else None (``'²'``, ``'٣'``, ``'-1'``)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > 19:
        return None
    value = int(raw)
    return value if value <= INT64_MAX else None


def query_problems(pairs: Iterable[tuple[str, str]], allowed: Iterable[str]) -> list[Problem]:
    """Unknown parameters, NUL characters, an empty ``cursor`` and a ``limit`` not in ASCII digits.

    One rule for every endpoint: a parameter it does not take is refused (a
    typo such as ``?stauts=`` would otherwise silently list everything), and
    ``cursor=`` with no value is refused as "not a cursor this API returned"
    (the first page is asked for by leaving ``cursor`` out).
    """
    known = set(allowed)
    pairs = list(pairs)
    problems = text_problems(pairs)
    takes = ", ".join(sorted(known)) or "no query parameters"
    for name, value in pairs:
        if NUL in name:
            continue
        if name not in known:
            problems.append((name, f"unknown query parameter; this endpoint takes {takes}"))
        elif name == "cursor" and not value:
            problems.append((name, "not a cursor this API returned (leave cursor out for the first page)"))
        elif name == "limit" and ascii_int(value) is None:
            problems.append((name, "a whole number in ASCII digits"))
    return list(dict.fromkeys(problems))


class Int64Convertor:
    """``{name:int}`` path parameters: ASCII digits within 64 bits (``api/__init__`` installs it as ``int``).

    Starlette's own converts any run of digits, and a 20-digit id then breaks the
    bigint query it reaches (a 500). A number past 64 bits names nothing: 404.
    """

    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        number = ascii_int(value)
        if number is None:
            raise HTTPException(404, f"no such resource: {value[:40]} is beyond 64 bits")
        return number

    def to_string(self, value: int) -> str:
        if not 0 <= value <= INT64_MAX:
            raise ValueError("an id is a 64-bit integer, not negative")
        return str(value)

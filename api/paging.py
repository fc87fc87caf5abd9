"""Keyset pagination shared by the list endpoints: opaque cursors and the ``limit`` parameter.

A cursor is the last id of a page, tagged with the kind of list it belongs to
(``c1`` campaigns, ``t1`` templates, ...) and URL-safe base64 encoded, so that a
client treats it as opaque and a cursor of one list is refused by another.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from api.inputs import ascii_int

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def encode_cursor(kind: str, last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> int | None:
    """The id a cursor of ``kind`` points after, or None if it is not one this API issued."""
    try:
        tag, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return ascii_int(value) if tag == kind else None


def page_limit(query: Mapping[str, str], problems: list[tuple[str, str]]) -> int:
    """``?limit=`` (1 to 200, default 50); a bad value is appended to ``problems``."""
    if "limit" not in query:
        return DEFAULT_LIMIT
    limit = ascii_int(query["limit"]) or 0
    if not 1 <= limit <= MAX_LIMIT:
        problems.append(("limit", f"an integer from 1 to {MAX_LIMIT}"))
        return DEFAULT_LIMIT
    return limit

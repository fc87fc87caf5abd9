"""Bearer API keys: who is calling, and may they?

A key reads ``hk_<prefix>_<secret>``: the 8-character prefix finds the row
(and lets people tell keys apart in listings and logs), the 43-character
secret is 256 random bits. Only the SHA-256 digest of the whole key is stored;
with that much entropy a slow password hash would buy nothing, and a fast
digest keeps verification cheap enough to do on every request.

Verified keys are remembered in-process for ``settings.api_key_cache_s``
seconds so a request need not touch Postgres; a revocation therefore takes
effect within that window (at once in the process that revoked).
``last_used_at`` is written at most once a minute per key, so busy keys do not
turn every read into a write.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError
from api.ratelimit import check_key

ROLES = ("admin", "marketer", "analyst")
Role = Literal["admin", "marketer", "analyst"]

_KEY_SHAPE = re.compile(r"hk_([a-z0-9]{8})_([A-Za-z0-9_-]{43})")
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
TOUCH_EVERY_S = 60.0


@dataclass(frozen=True)
class IssuedKey:
    """A freshly generated key: the plaintext is shown once, then only prefix and digest remain."""

    key: str
    prefix: str
    digest: bytes


@dataclass(frozen=True)
class Caller:
    """The key behind a request, as handlers see it on ``request.state.caller``."""

    key_id: int
    name: str
    role: str


def generate_key() -> IssuedKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    key = f"hk_{prefix}_{secrets.token_urlsafe(32)}"
    return IssuedKey(key=key, prefix=prefix, digest=key_digest(key))


def key_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, or None: malformed keys never reach the database."""
    match = _KEY_SHAPE.fullmatch(key)
    return match.group(1) if match else None


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def digest_matches(stored: bytes, presented: bytes) -> bool:
    return hmac.compare_digest(bytes(stored), presented)


class KeyCache:
    """Callers by key digest for ``ttl_s`` seconds, and when each key's use was last recorded."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_keys = max_keys
        self._callers: dict[bytes, tuple[Caller, float]] = {}
        self._touched: dict[int, float] = {}

    def get(self, digest: bytes) -> Caller | None:
        entry = self._callers.get(digest)
        if entry is None:
            return None
        caller, expires = entry
        if self.clock() >= expires:
            del self._callers[digest]
            return None
        return caller

    def put(self, digest: bytes, caller: Caller) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._callers) >= self.max_keys:
            # Oldest first: dicts keep insertion order.
            del self._callers[next(iter(self._callers))]
        self._callers[digest] = (caller, self.clock() + self.ttl_s)

    def forget(self, key_id: int) -> None:
        """Drop a revoked key at once instead of waiting out the window."""
        for digest in [d for d, (c, _) in self._callers.items() if c.key_id == key_id]:
            del self._callers[digest]

    def touch_due(self, key_id: int) -> bool:
        """True (and the clock restarts) if this key's use has not been recorded for a minute."""
        now = self.clock()
        if now - self._touched.get(key_id, float("-inf")) < TOUCH_EVERY_S:
            return False
        if len(self._touched) >= self.max_keys:
            self._touched.clear()
        self._touched[key_id] = now
        return True


def _unauthorized(message: str, invalid_token: bool) -> ApiError:
    challenge = 'Bearer realm="herald"' + (', error="invalid_token"' if invalid_token else "")
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


async def authenticate(request: Request) -> Caller:
    """The caller whose key is in the Authorization header, or a 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not scheme:
        raise _unauthorized("an API key is required: send 'Authorization: Bearer hk_...'", invalid_token=False)
    token = token.strip()
    prefix = key_prefix(token)
    if scheme.lower() != "bearer" or prefix is None:
        raise _unauthorized("malformed API key: expected 'Authorization: Bearer hk_<prefix>_<secret>'", True)

    state = request.app.state
    digest = key_digest(token)
    caller = state.key_cache.get(digest)
    if caller is None:
        row = await state.postgres.fetchrow(
            "SELECT key_id, name, role, key_hash, revoked_at FROM api_keys WHERE prefix = $1", prefix
        )
        if row is None or not digest_matches(row["key_hash"], digest) or row["revoked_at"] is not None:
            raise _unauthorized("unknown or revoked API key", invalid_token=True)
        caller = Caller(key_id=row["key_id"], name=row["name"], role=row["role"])
        state.key_cache.put(digest, caller)
    if state.key_cache.touch_due(caller.key_id):
        # The WHERE keeps several API processes from each writing within the same minute.
        await state.postgres.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE key_id = $1"
            " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            caller.key_id,
        )
    return caller


Endpoint = Callable[[Request], Awaitable[Response]]


def require_role(*roles: str) -> Callable[[Endpoint], Endpoint]:
    """Let only keys with one of ``roles`` call the endpoint; the caller lands on ``request.state.caller``.

    The roles are kept on the endpoint (``endpoint.roles``) so the OpenAPI
    document can mark it as needing a bearer key. Each call draws on the key's
    rate limit (``api.ratelimit``): 429 with ``Retry-After`` when it is spent.
    """
    unknown = set(roles) - set(ROLES)
    if not roles or unknown:
        raise ValueError(f"require_role needs roles from {ROLES}, got {roles}")

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            caller = await authenticate(request)
            if caller.role not in roles:
                raise ApiError(
                    403,
                    "forbidden",
                    f"this needs a key with role {' or '.join(roles)}; this key has role {caller.role}",
                )
            request.state.caller = caller
            verdict = await check_key(request, caller.key_id, caller.role)  # 429 when over the key's limit
            response = await endpoint(request)
            if verdict is not None:
                response.headers.update(verdict.headers())
            return response

        guarded.roles = roles  # type: ignore[attr-defined]
        return guarded

    return decorate

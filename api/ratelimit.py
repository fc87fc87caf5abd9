"""Rate limits: a token bucket per API key, and per client address on the public endpoints.

    authenticated routes   ratelimit:key:{key id}          rate by the key's role, or the key's own
    public routes          ratelimit:{group}:{address}     groups: unsubscribe, tracking, callbacks

Each bucket is one Redis hash, refilled and drawn from by one Lua script on Redis's own clock, so
every API process draws from the same bucket and none can race another between read and write. A
refused request takes no token, so ``Retry-After`` is exactly when the next one will be let in.
Over the limit: 429 in the one error shape, with ``Retry-After`` (whole seconds) and the draft
``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` headers, which every limited
answer carries, the 2xx ones too.

Redis unreachable: the request is let through (fail open) and a warning is logged, at most once a
minute per process. A limit exists to protect the service from a runaway client; refusing every
request because the limiter's store is down would turn a Redis outage into an API outage.

The client address is the TCP peer's (``request.client``): behind a proxy, run uvicorn with
``--proxy-headers`` and ``--forwarded-allow-ips`` so that the peer is the visitor, not the proxy.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError
from config import Settings
from pipeline.send.pacing import REFILL_LUA
from schemas.keys import address_limit_key, api_key_limit_key

log = structlog.get_logger("herald.api")

PUBLIC_GROUPS = ("unsubscribe", "tracking", "callbacks")
WARN_EVERY_S = 60.0

# KEYS[1] the bucket hash {tokens, ts}; ARGV rate (tokens/s), burst.
# Returns {allowed (1|0), tokens left (floor), ms until one token, ms until the bucket is full}.
TAKE_ONE = REFILL_LUA + """
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', last))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) / rate * 1000)
end
return {allowed, math.floor(tokens), wait, math.ceil((burst - tokens) / rate * 1000)}
"""


@dataclass(frozen=True)
class Limit:
    rate: float  # requests per second, sustained
    burst: float  # requests at once, after a quiet spell


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: Limit
    remaining: int
    retry_after_ms: int
    reset_ms: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(int(self.limit.burst)),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_ms / 1000)),
        }


def parse_rates(text: str) -> dict[str, float]:
    """``"admin=1000, analyst=50"`` → ``{"admin": 1000.0, "analyst": 50.0}`` (settings already checked the shape)."""
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {name.strip(): float(rate) for name, rate in pairs}


def limit_for(rate: float, burst_s: float) -> Limit:
    return Limit(rate=rate, burst=max(1.0, math.floor(rate * burst_s)))


def key_limit(settings: Settings, key_id: int, role: str) -> Limit | None:
    """The limit of one API key: its own if the settings name it, else its role's; None if neither has one."""
    own = parse_rates(settings.api_rate_limit_keys).get(str(key_id))
    rate = own if own is not None else parse_rates(settings.api_rate_limits).get(role)
    return limit_for(rate, settings.rate_limit_burst_s) if rate else None


def public_limit(settings: Settings, group: str) -> Limit | None:
    rate = parse_rates(settings.public_rate_limits).get(group)
    return limit_for(rate, settings.rate_limit_burst_s) if rate else None


def refusal(verdict: Verdict, who: str) -> ApiError:
    retry_after = max(1, math.ceil(verdict.retry_after_ms / 1000))
    return ApiError(
        429, "rate_limited",
        f"too many requests from {who}: the limit is {verdict.limit.rate:g} per second"
        f" (bursts of {int(verdict.limit.burst)}); retry after {retry_after} s",
        headers={"Retry-After": str(retry_after), **verdict.headers()},
    )


_last_warning = 0.0


async def take(request: Request, key: str, limit: Limit) -> Verdict | None:
    """One token from bucket ``key``; None when Redis could not be asked (the request goes through)."""
    global _last_warning
    state = request.app.state
    script = getattr(state, "rate_limit_script", None)
    if script is None or script.registered_client is not state.redis:  # a new lifespan, a new client
        script = state.rate_limit_script = state.redis.register_script(TAKE_ONE)
    try:
        allowed, remaining, wait_ms, reset_ms = await script(keys=[key], args=[limit.rate, limit.burst])
    except (RedisError, OSError) as exc:
        if time.monotonic() - _last_warning > WARN_EVERY_S:
            _last_warning = time.monotonic()
            log.warning("rate limits not applied: Redis did not answer; letting requests through", error=repr(exc))
        return None
    return Verdict(bool(allowed), limit, int(remaining), int(wait_ms), int(reset_ms))


async def check_key(request: Request, key_id: int, role: str) -> Verdict | None:
    """Raise 429 if this API key is over its limit; the verdict (for the headers) otherwise."""
    settings = request.app.state.settings
    limit = key_limit(settings, key_id, role) if settings.rate_limits else None
    if limit is None:
        return None
    verdict = await take(request, api_key_limit_key(key_id), limit)
    if verdict is not None and not verdict.allowed:
        raise refusal(verdict, "this API key")
    return verdict


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


Endpoint = Callable[[Request], Awaitable[Response]]


def limited_by_address(group: str) -> Callable[[Endpoint], Endpoint]:
    """Limit a public endpoint per client address, in bucket group ``group`` (shared by the group's routes).

    Marks the endpoint (``endpoint.rate_limited``) so the OpenAPI document lists its 429.
    """
    if group not in PUBLIC_GROUPS:
        raise ValueError(f"limited_by_address needs a group from {PUBLIC_GROUPS}, got {group!r}")

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def limited(request: Request) -> Response:
            settings = request.app.state.settings
            limit = public_limit(settings, group) if settings.rate_limits else None
            verdict = None
            if limit is not None:
                verdict = await take(request, address_limit_key(group, client_address(request)), limit)
                if verdict is not None and not verdict.allowed:
                    raise refusal(verdict, "this address")
            response = await endpoint(request)
            if verdict is not None:
                response.headers.update(verdict.headers())
            return response

        limited.rate_limited = True  # type: ignore[attr-defined]
        return limited

    return decorate

"""The rate limits' settings: which limit a key or a public group gets, and what a refusal says."""

from __future__ import annotations

import pytest

from api.ratelimit import Limit, Verdict, key_limit, limited_by_address, parse_rates, public_limit, refusal
from config import Settings


def test_rates_are_read_by_name():
    assert parse_rates(" admin=1000, analyst=2.5 ") == {"admin": 1000.0, "analyst": 2.5}
    assert parse_rates("") == {}


def test_a_key_named_in_the_settings_gets_its_own_limit_and_others_their_roles():
    settings = Settings(api_rate_limits="admin=100,analyst=10", api_rate_limit_keys="7=1", rate_limit_burst_s=2)
    assert key_limit(settings, 7, "admin") == Limit(rate=1, burst=2)
    assert key_limit(settings, 8, "admin") == Limit(rate=100, burst=200)
    assert key_limit(settings, 8, "marketer") is None  # a role the settings do not name is not limited


def test_a_burst_is_at_least_one_request():
    settings = Settings(public_rate_limits="tracking=0.2", rate_limit_burst_s=1)
    assert public_limit(settings, "tracking") == Limit(rate=0.2, burst=1)
    assert public_limit(settings, "callbacks") is None


def test_default_limits_leave_the_benches_500_requests_a_second_alone():
    settings = Settings()
    assert all(key_limit(settings, 1, role).rate >= 500 for role in ("admin", "marketer", "analyst"))


def test_malformed_limit_settings_are_refused_at_start():
    with pytest.raises(ValueError):
        Settings(api_rate_limits="admin:100")


def test_a_refusal_is_a_429_with_whole_seconds_to_wait():
    verdict = Verdict(allowed=False, limit=Limit(rate=0.5, burst=1), remaining=0, retry_after_ms=1200, reset_ms=1200)
    error = refusal(verdict, "this API key")
    assert error.status == 429 and error.code == "rate_limited"
    assert error.headers == {"Retry-After": "2", "RateLimit-Limit": "1", "RateLimit-Remaining": "0",
                             "RateLimit-Reset": "2"}


def test_only_known_public_groups_can_be_limited():
    with pytest.raises(ValueError):
        limited_by_address("everything")

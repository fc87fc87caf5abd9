"""Key generation, parsing and hashing, and the verified-key cache: no servers needed."""

from __future__ import annotations

import hashlib
import re

import pytest

from api.auth import Caller, KeyCache, digest_matches, generate_key, key_digest, key_prefix, require_role


def test_generated_key_has_the_documented_shape():
    issued = generate_key()

    assert re.fullmatch(r"hk_[a-z0-9]{8}_[A-Za-z0-9_-]{43}", issued.key)
    assert issued.key[3:11] == issued.prefix
    assert key_prefix(issued.key) == issued.prefix


def test_generated_keys_differ():
    assert len({generate_key().key for _ in range(1000)}) == 1000


def test_only_the_sha256_digest_of_the_whole_key_is_kept():
    issued = generate_key()

    assert issued.digest == hashlib.sha256(issued.key.encode()).digest() == key_digest(issued.key)
    assert digest_matches(issued.digest, key_digest(issued.key))
    assert not digest_matches(issued.digest, key_digest(generate_key().key))


def test_secret_may_contain_underscores_and_dashes():
    key = "hk_abcd1234_" + "_-" * 21 + "x"

    assert key_prefix(key) == "abcd1234"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "hk_abcd1234",
        "hk_abcd1234_" + "a" * 42,  # secret too short
        "hk_abcd1234_" + "a" * 44,  # secret too long
        "hk_ABCD1234_" + "a" * 43,  # prefix is lowercase
        "hx_abcd1234_" + "a" * 43,
        "hk_abcd1234_" + "a" * 42 + "=",
        " hk_abcd1234_" + "a" * 43,
    ],
)
def test_malformed_keys_have_no_prefix(key):
    assert key_prefix(key) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cached_caller_expires_after_the_window():
    clock = Clock()
    cache = KeyCache(ttl_s=5, clock=clock)
    caller = Caller(key_id=1, name="ops", role="admin")
    cache.put(b"digest", caller)

    clock.now += 4.9
    assert cache.get(b"digest") == caller
    clock.now += 0.1
    assert cache.get(b"digest") is None


def test_zero_window_caches_nothing():
    cache = KeyCache(ttl_s=0)
    cache.put(b"digest", Caller(key_id=1, name="ops", role="admin"))

    assert cache.get(b"digest") is None


def test_forgetting_a_key_drops_it_at_once():
    cache = KeyCache(ttl_s=60)
    cache.put(b"one", Caller(key_id=1, name="a", role="admin"))
    cache.put(b"two", Caller(key_id=2, name="b", role="analyst"))

    cache.forget(1)

    assert cache.get(b"one") is None and cache.get(b"two") is not None


def test_cache_is_bounded():
    cache = KeyCache(ttl_s=60, max_keys=2)
    for n in range(3):
        cache.put(bytes([n]), Caller(key_id=n, name=str(n), role="analyst"))

    assert cache.get(bytes([0])) is None and cache.get(bytes([2])) is not None


def test_last_use_is_recorded_at_most_once_a_minute():
    clock = Clock()
    cache = KeyCache(ttl_s=5, clock=clock)

    assert cache.touch_due(7)
    clock.now += 59
    assert not cache.touch_due(7)
    assert cache.touch_due(8)
    clock.now += 1
    assert cache.touch_due(7)


def test_require_role_rejects_roles_herald_does_not_have():
    with pytest.raises(ValueError):
        require_role("owner")
    with pytest.raises(ValueError):
        require_role()

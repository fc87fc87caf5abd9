"""The signing key: from settings when set, else created once in .local and reused."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from config import Settings
from pipeline import signing
from pipeline.signing import purpose_key, signing_key


def test_configured_secret_is_the_key(tmp_path):
    settings = Settings(signing_secret="s" * 32, local_dir=tmp_path)
    assert signing_key(settings) == b"s" * 32
    assert not (tmp_path / "signing.key").exists()


def test_short_configured_secret_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16"):
        signing_key(Settings(signing_secret="short", local_dir=tmp_path))


def test_without_a_secret_a_private_key_file_is_created_once_and_reused(tmp_path):
    settings = Settings(signing_secret=None, local_dir=tmp_path / "local")
    first = signing_key(settings)
    path = tmp_path / "local" / "signing.key"
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    signing._key_file.cache_clear()  # as a new process would
    assert signing_key(settings) == first
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp files left


def test_processes_racing_to_create_the_key_agree(tmp_path):
    path = tmp_path / "signing.key"

    def create_and_read(_):
        signing._create_key_file(path)
        return path.read_text()

    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(create_and_read, range(16)))
    assert len(keys) == 1


def test_each_purpose_gets_its_own_subkey():
    key = b"k" * 32
    assert purpose_key(key, "unsubscribe") != purpose_key(key, "tracked-link")
    assert purpose_key(key, "unsubscribe") == purpose_key(key, "unsubscribe")
    assert purpose_key(key, "unsubscribe") != purpose_key(b"o" * 32, "unsubscribe")

"""Herald's signing key: the secret behind unsubscribe tokens and tracked links.

The key is ``settings.signing_secret`` when set (several API and worker
processes on several hosts must share it), otherwise a random 32-byte secret
created once in ``settings.local_dir / "signing.key"`` (mode 0600, hex) and
reused, so links that went out yesterday still verify after a restart.

Each use signs with its own subkey, ``purpose_key(key, "unsubscribe")``, so a
valid tracked-link signature can never be replayed as an unsubscribe token (or
the other way round) even though both come from one secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path

from config import Settings

KEY_BYTES = 32
MIN_SECRET_BYTES = 16
KEY_FILE_NAME = "signing.key"


def signing_key(settings: Settings) -> bytes:
    """The secret all signatures derive from (read or created once per process and path)."""
    if settings.signing_secret:
        secret = settings.signing_secret.encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"HERALD_SIGNING_SECRET is {len(secret)} bytes; use at least {MIN_SECRET_BYTES} random bytes"
            )
        return secret
    return _key_file(settings.local_dir / KEY_FILE_NAME)


def purpose_key(key: bytes, purpose: str) -> bytes:
    """A subkey for one kind of signature: HMAC-SHA256(key, "herald:" + purpose)."""
    return hmac.new(key, f"herald:{purpose}".encode(), hashlib.sha256).digest()


def local_secret(path: Path) -> bytes:
    """A random secret kept in ``path`` (hex, mode 0600), created there the first time."""
    return _key_file(path)


@lru_cache(maxsize=8)
def _key_file(path: Path) -> bytes:
    if not path.exists():
        _create_key_file(path)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path} does not hold a hex signing key") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"{path} holds a {len(key)}-byte key; at least {MIN_SECRET_BYTES} are needed")
    return key


def _create_key_file(path: Path) -> None:
    """Write a new key beside ``path`` and link it into place: only one process's key ever wins.

    ``os.link`` fails if the name exists, so two processes starting together
    both end up reading whichever complete file was linked first, never a
    half-written one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(KEY_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
    finally:
        temp.unlink(missing_ok=True)

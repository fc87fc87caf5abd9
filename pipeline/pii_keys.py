"""The keys that encrypt email and phone at rest, from settings or from ``.local/``.

``HERALD_PII_KEYS`` ("id=<64 hex>,...", the first one encrypts) and ``HERALD_PII_INDEX_KEY`` (hex)
when set: every API and worker process must share them. Otherwise two random 32-byte secrets are
created once in ``settings.local_dir`` (``pii.key`` and ``pii-index.key``, mode 0600), like the
signing key, under the key id ``local``. Losing them loses the addresses they encrypted.
"""

from __future__ import annotations

from config import Settings
from pipeline.pii import Keyring, parse_keys
from pipeline.signing import local_secret

LOCAL_KEY_ID = "local"


def pii_keyring(settings: Settings) -> Keyring:
    if settings.pii_keys:
        current, keys = parse_keys(settings.pii_keys)
    else:
        current, keys = LOCAL_KEY_ID, {LOCAL_KEY_ID: local_secret(settings.local_dir / "pii.key")}
    if settings.pii_index_key:
        index_key = bytes.fromhex(settings.pii_index_key)
    else:
        index_key = local_secret(settings.local_dir / "pii-index.key")
    return Keyring(current, keys, index_key)

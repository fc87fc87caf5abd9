"""Personal data at rest: email addresses and phone numbers, encrypted, found through a blind index.

Pure: no I/O. Keys come in as a ``Keyring`` (``pipeline.pii_keys`` builds one from settings).

Encryption is AES-256-GCM with a random 96-bit nonce per value, bound to its field ("email" or
"phone") as associated data, so a phone ciphertext pasted into the email column does not decrypt.
GCM rather than deterministic AES-SIV: equal addresses then give unrelated ciphertexts, so the
encrypted column says nothing about who shares an address; every lookup by address goes through
the blind index instead, which is the one deterministic thing stored. A stored value reads

    <key id>:<base64url(nonce ‖ ciphertext ‖ tag)>

and the key id names the key that wrote it, so a new key can take over the writes while the old
ones still read what they wrote (``Keyring.keys``: id → key; ``Keyring.current``: the writing one).

The blind index is HMAC-SHA256 under a second key over ``"<field>:" + normalized value`` (an email
lowercased and trimmed; a phone number in E.164, ``+`` and digits only), hex. It is stored in its
own column (``email_idx``, ``phone_idx``) and every lookup or comparison by address uses it:
``email_index(keyring, address)`` is what an unsubscribe check, the SMS inbound lookup or an
erasure (which replaces an address by its index) calls. That key cannot rotate without
re-indexing every row (a script's job, not a read-time fallback).

The column mapping lives here too (``CONTACT_COLUMNS``, ``HAS_EMAIL_SQL``, ``contact_columns``,
``contact_of``): rows written before migration 012 still hold plaintext ``email``/``phone`` and no
ciphertext, and are read as they are until a backfill encrypts them and a later migration drops
the plaintext columns.

``redact`` is the logs' safety net: it replaces anything shaped like an email address or an E.164
number in a line that is about to be written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FIELDS = ("email", "phone")
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")
_PHONE_FORMATTING = re.compile(r"[\s().\-/]")

# The users columns that hold contact data, for a SELECT; ``contact_of`` turns a row into addresses.
CONTACT_COLUMNS = "email_enc, phone_enc, email, phone"
# Whether a user has an address, without decrypting (legacy plaintext rows count too).
HAS_EMAIL_SQL = "(email_enc IS NOT NULL OR email IS NOT NULL)"
HAS_PHONE_SQL = "(phone_enc IS NOT NULL OR phone IS NOT NULL)"


class PiiError(ValueError):
    """A stored value that cannot be read: unknown key id, malformed, or tampered with."""


@dataclass(frozen=True)
class Keyring:
    """Encryption keys by id (``current`` writes, all read) and the blind-index key."""

    current: str
    keys: Mapping[str, bytes]
    index_key: bytes

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the current PII key id {self.current!r} is not among the keys")
        for kid, key in self.keys.items():
            if not _KEY_ID.fullmatch(kid):
                raise ValueError(f"PII key id {kid!r}: use 1-16 letters, digits, '-' or '_'")
            if len(key) != KEY_BYTES:
                raise ValueError(f"PII key {kid!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
        if len(self.index_key) < 16:
            raise ValueError("the PII blind-index key needs at least 16 bytes")


def parse_keys(text: str) -> tuple[str, dict[str, bytes]]:
    """``"k2=<64 hex>,k1=<64 hex>"`` → ("k2", {...}): the first key writes, every key reads."""
    keys: dict[str, bytes] = {}
    current = ""
    for part in text.split(","):
        if not part.strip():
            continue
        kid, sep, hexkey = part.strip().partition("=")
        if not sep:
            raise ValueError("PII keys are written id=hex, separated by commas")
        try:
            keys[kid.strip()] = bytes.fromhex(hexkey.strip())
        except ValueError:
            raise ValueError(f"PII key {kid.strip()!r} is not hex") from None
        current = current or kid.strip()
    if not keys:
        raise ValueError("no PII key given")
    return current, keys


# ---------------------------------------------------------------- encryption


def encrypt(keyring: Keyring, field: str, plaintext: str) -> str:
    """``plaintext`` encrypted under the current key, as ``<key id>:<base64url>``."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(keyring.keys[keyring.current]).encrypt(nonce, plaintext.encode(), _aad(field))
    return f"{keyring.current}:{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def decrypt(keyring: Keyring, field: str, stored: str) -> str:
    """The plaintext of a value ``encrypt`` made for ``field``; ``PiiError`` if it cannot be trusted."""
    kid, sep, body = stored.partition(":")
    if not sep:
        raise PiiError("not an encrypted value (no key id)")
    key = keyring.keys.get(kid)
    if key is None:
        raise PiiError(f"unknown PII key id {kid!r}")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise PiiError("malformed encrypted value") from None
    if len(raw) < NONCE_BYTES + 16:
        raise PiiError("malformed encrypted value")
    try:
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(field)).decode()
    except InvalidTag:
        raise PiiError("encrypted value refused: tampered with, or not this field's") from None


def _aad(field: str) -> bytes:
    if field not in FIELDS:
        raise ValueError(f"not a PII field: {field!r}")
    return f"herald:pii:{field}".encode()


# ---------------------------------------------------------------- blind index


def normalize_email(address: str) -> str:
    return address.strip().lower()


def normalize_phone(number: str) -> str:
    """E.164 as far as the text allows: formatting dropped, a leading ``00`` read as ``+``."""
    digits = _PHONE_FORMATTING.sub("", number.strip())
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    return digits


def blind_index(keyring: Keyring, field: str, value: str) -> str:
    """HMAC-SHA256 (hex) of the normalized value: equal addresses, equal index; nothing else leaks."""
    normalized = normalize_email(value) if field == "email" else normalize_phone(value)
    _aad(field)  # refuses unknown fields
    return hmac.new(keyring.index_key, f"{field}:{normalized}".encode(), hashlib.sha256).hexdigest()


def email_index(keyring: Keyring, address: str) -> str:
    """The blind index of an email address (``users.email_idx``, ``unsubscribes.email_idx``)."""
    return blind_index(keyring, "email", address)


def phone_index(keyring: Keyring, number: str) -> str:
    """The blind index of a phone number (``users.phone_idx``): what an inbound SMS is matched by."""
    return blind_index(keyring, "phone", number)


# ---------------------------------------------------------------- the column mapping


def sealed(keyring: Keyring, field: str, value: str | None) -> tuple[str | None, str | None]:
    """(ciphertext, blind index) of one value; (None, None) for none."""
    if value is None or not value.strip():
        return None, None
    return encrypt(keyring, field, value.strip()), blind_index(keyring, field, value)


def contact_columns(keyring: Keyring, email: str | None, phone: str | None) -> dict[str, str | None]:
    """What a users row stores for these addresses: ciphertexts and indexes, never plaintext."""
    email_enc, email_idx = sealed(keyring, "email", email)
    phone_enc, phone_idx = sealed(keyring, "phone", phone)
    return {"email": None, "phone": None, "email_enc": email_enc, "email_idx": email_idx,
            "phone_enc": phone_enc, "phone_idx": phone_idx}


def contact_of(keyring: Keyring, row: Mapping) -> tuple[str | None, str | None]:
    """(email, phone) of a row selected with ``CONTACT_COLUMNS`` (a legacy plaintext row as it is)."""
    return _reveal(keyring, "email", row), _reveal(keyring, "phone", row)


def _reveal(keyring: Keyring, field: str, row: Mapping) -> str | None:
    stored = row.get(f"{field}_enc")
    if stored is not None:
        return decrypt(keyring, field, stored)
    return row.get(field)


# ---------------------------------------------------------------- logs

# Shapes, not known values: anything that looks like an address or an E.164 number.
EMAIL_PATTERN = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
PHONE_PATTERN = re.compile(r"(?<![\w+])\+[1-9][0-9]{6,14}(?![0-9])")


def redact(text: str) -> str:
    """``text`` with email addresses and E.164 phone numbers replaced by ``[email]`` and ``[phone]``."""
    if "@" in text:
        text = EMAIL_PATTERN.sub("[email]", text)
    if "+" in text:
        text = PHONE_PATTERN.sub("[phone]", text)
    return text

"""Email and phone at rest: encryption, key rotation, the blind index, the column mapping, redaction."""

from __future__ import annotations

import base64

import pytest

from config import Settings
from pipeline import pii
from pipeline.pii import Keyring, PiiError
from pipeline.pii_keys import pii_keyring

OLD, NEW, INDEX = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def ring(current: str = "k1", **keys: bytes) -> Keyring:
    return Keyring(current, keys or {"k1": OLD}, INDEX)


def test_an_address_round_trips_and_the_ciphertext_does_not_show_it():
    stored = pii.encrypt(ring(), "email", "ada@example.com")
    assert stored.startswith("k1:") and "ada" not in stored and "example" not in stored
    assert pii.decrypt(ring(), "email", stored) == "ada@example.com"


def test_equal_addresses_encrypt_differently():
    assert pii.encrypt(ring(), "phone", "+15551234567") != pii.encrypt(ring(), "phone", "+15551234567")


def test_a_tampered_ciphertext_is_refused():
    stored = pii.encrypt(ring(), "email", "ada@example.com")
    kid, body = stored.split(":")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 1
    with pytest.raises(PiiError, match="refused"):
        pii.decrypt(ring(), "email", f"{kid}:{base64.urlsafe_b64encode(bytes(raw)).decode()}")


def test_a_phone_ciphertext_does_not_read_as_an_email():
    with pytest.raises(PiiError):
        pii.decrypt(ring(), "email", pii.encrypt(ring(), "phone", "+15551234567"))


def test_a_new_key_writes_and_the_old_one_still_reads():
    written_before = pii.encrypt(ring(), "email", "old@example.com")
    rotated = ring("k2", k2=NEW, k1=OLD)
    written_after = pii.encrypt(rotated, "email", "new@example.com")
    assert written_after.startswith("k2:")
    assert pii.decrypt(rotated, "email", written_before) == "old@example.com"
    with pytest.raises(PiiError, match="unknown PII key id 'k2'"):
        pii.decrypt(ring(), "email", written_after)


def test_keys_are_parsed_first_one_current():
    current, keys = pii.parse_keys(f"k2={NEW.hex()}, k1={OLD.hex()}")
    assert current == "k2" and keys == {"k2": NEW, "k1": OLD}
    with pytest.raises(ValueError):
        Keyring("k1", {"k1": b"short"}, INDEX)


def test_the_blind_index_matches_normalized_addresses_only():
    assert pii.email_index(ring(), " Ada@Example.COM ") == pii.email_index(ring(), "ada@example.com")
    assert pii.email_index(ring(), "ada@example.com") != pii.email_index(ring(), "ada@example.org")
    assert pii.phone_index(ring(), "+1 (555) 123-4567") == pii.phone_index(ring(), "+15551234567")
    assert pii.phone_index(ring(), "0015551234567") == pii.phone_index(ring(), "+15551234567")
    assert pii.phone_index(ring(), "+15551234567") != pii.phone_index(ring(), "+15551234568")
    # Keyed: another index key gives another index, and a field's index is not another field's.
    assert pii.email_index(Keyring("k1", {"k1": OLD}, b"\x04" * 32), "a@b.co") != pii.email_index(ring(), "a@b.co")
    assert pii.blind_index(ring(), "email", "+15551234567") != pii.blind_index(ring(), "phone", "+15551234567")


def test_the_columns_hold_no_plaintext_and_read_back():
    columns = pii.contact_columns(ring(), "Ada@Example.com", "+15551234567")
    assert columns["email"] is None and columns["phone"] is None
    assert columns["email_idx"] == pii.email_index(ring(), "ada@example.com")
    assert "Ada" not in str(columns) and "5551234567" not in str(columns)
    assert pii.contact_of(ring(), columns) == ("Ada@Example.com", "+15551234567")
    assert pii.contact_of(ring(), pii.contact_columns(ring(), None, "  ")) == (None, None)


def test_a_row_from_before_encryption_is_read_as_it_is():
    legacy = {"email": "old@example.com", "phone": None, "email_enc": None, "phone_enc": None}
    assert pii.contact_of(ring(), legacy) == ("old@example.com", None)


def test_local_keys_are_created_once_and_reused(tmp_path):
    settings = Settings(local_dir=tmp_path, pii_keys=None, pii_index_key=None)
    first, again = pii_keyring(settings), pii_keyring(settings)
    assert first.current == "local" and first.keys == again.keys and first.index_key == again.index_key
    assert (tmp_path / "pii.key").stat().st_mode & 0o777 == 0o600
    configured = pii_keyring(Settings(local_dir=tmp_path, pii_keys=f"prod1={NEW.hex()}", pii_index_key=INDEX.hex()))
    assert configured.current == "prod1" and configured.index_key == INDEX


def test_redact_hides_addresses_and_numbers_and_keeps_the_rest():
    line = ("dead letter reason=\"550 <Bob.Smith+news@mail.example.co.uk> unknown\" "
            "to=+447700900123 campaign_id=42 offset=+3 at=2026-12-05T15:00:00+00:00")
    out = pii.redact(line)
    assert "Bob.Smith" not in out and "447700900123" not in out
    assert "[email]" in out and "[phone]" in out and "campaign_id=42 offset=+3" in out and "+00:00" in out

"""The logs a test run wrote, and the test users' addresses and phone numbers found in them.

Test users get addresses by pattern (``tests/helpers/pipeline.py``: ``u{id}@example.test``,
``+1555{7 digits}``; the API tests' ``pref-{id}@example.com``, ``user{n}@example.com``; the peers'
``+1415555····`` and ``+1500555····``; the benches' ``@bench.test``), so the scan looks for those
shapes, not for a list of known values. The sender's own From number is configuration, not a user's.

``log_offsets`` notes how long each log file is when the run starts (the workers append to theirs);
``leaks_since`` reads only what was written after, so an older run's lines are not this run's fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

TEST_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@(?:example\.test|example\.com|example\.org|bench\.test)\b")
TEST_PHONE = re.compile(r"\+1(?:555[0-9]{7}|415555[0-9]{4}|500555[0-9]{4})(?![0-9])")


def find_leaks(text: str, allowed: Iterable[str] = ()) -> set[str]:
    """The test users' addresses and phone numbers in ``text`` (values in ``allowed`` excepted)."""
    found = set(TEST_EMAIL.findall(text)) | set(TEST_PHONE.findall(text))
    return found - set(allowed)


def log_files(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.glob("*.log") if p.is_file()) if log_dir.is_dir() else []


def log_offsets(log_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in log_files(log_dir)}


def leaks_since(log_dir: Path, offsets: Mapping[Path, int], allowed: Iterable[str] = ()) -> dict[str, set[str]]:
    """File name → leaked values, over what each log file gained since ``offsets`` were taken."""
    leaks: dict[str, set[str]] = {}
    for path in log_files(log_dir):
        with open(path, "rb") as file:
            start = offsets.get(path, 0)
            if path.stat().st_size < start:  # truncated or replaced since: read it all
                start = 0
            file.seek(start)
            found = find_leaks(file.read().decode("utf-8", "replace"), allowed)
        if found:
            leaks[path.name] = found
    return leaks

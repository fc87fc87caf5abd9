"""What each channel can carry: SMS encoding and segments, push and in-app lengths, email subjects.

These limits apply to *rendered* text. The API checks them twice: when a
template is saved (rendered with a sample profile and placeholders for
campaign variables, so an obviously oversized template is refused early) and
when it is previewed (rendered for a real user, with exact counts).

SMS, after GSM 03.38 and 3GPP TS 23.040::

    GSM-7    one segment: 160 septets   concatenated: 153 per segment (a 7-septet UDH)
    UCS-2    one segment:  70 units     concatenated:  67 per segment
    extension-table characters (^ { } [ ] ~ | \\ € form feed) cost two septets (ESC + char);
    one character outside GSM-7 turns the whole message into UCS-2;
    UCS-2 counts UTF-16 code units, so an emoji costs two;
    neither an ESC pair nor a surrogate pair is split across segments.

We refuse more than 10 segments: carriers reassemble up to 255 in theory, but
many handsets and aggregators give up beyond 6 to 10, and each segment is billed.

Push (chosen limits, not protocol limits: FCM only bounds the whole message
at 4096 bytes): Android shows about 65 characters of a title and about 240
of a body before truncating in the expanded shade; iOS shows less on the lock
screen, so these are upper bounds, with the 4096-byte payload checked too.
In-app messages are drawn by our own inbox UI: title <= 120, body <= 2000.
Email subjects longer than 255 characters are refused (inboxes show 40-80;
longer than 78 is a warning), and an HTML body over 102 KB is a warning
because Gmail clips such messages behind "[Message clipped]".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

SMS_MAX_SEGMENTS = 10
PUSH_TITLE_MAX = 65
PUSH_BODY_MAX = 240
PUSH_PAYLOAD_MAX_BYTES = 4096
IN_APP_TITLE_MAX = 120
IN_APP_BODY_MAX = 2000
EMAIL_SUBJECT_MAX = 255
EMAIL_SUBJECT_WARN = 78
EMAIL_HTML_WARN_BYTES = 102 * 1024
WEBHOOK_PAYLOAD_MAX_BYTES = 64 * 1024
URL_MAX = 2048

_SINGLE = {"GSM-7": 160, "UCS-2": 70}
_CONCATENATED = {"GSM-7": 153, "UCS-2": 67}


@dataclass(frozen=True, slots=True)
class SmsCount:
    encoding: str  # "GSM-7" or "UCS-2"
    characters: int  # as a person counts them (code points)
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int  # capacity of a segment at this length: 160/153 or 70/67
    remaining: int  # units left in the last segment before another is needed

    def as_dict(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "characters": self.characters,
            "units": self.units,
            "segments": self.segments,
            "per_segment": self.per_segment,
            "remaining_in_segment": self.remaining,
        }


def sms_encoding(text: str) -> str:
    """GSM-7 if every character is in the basic or extension table, else UCS-2."""
    for char in text:
        if char not in GSM7_BASIC and char not in GSM7_EXTENSION:
            return "UCS-2"
    return "GSM-7"


def _costs(text: str, encoding: str) -> list[int]:
    if encoding == "GSM-7":
        return [2 if char in GSM7_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def sms_count(text: str) -> SmsCount:
    """Encoding, length and segment count of ``text`` as an SMS."""
    encoding = sms_encoding(text)
    costs = _costs(text, encoding)
    units = sum(costs)
    if units <= _SINGLE[encoding]:
        return SmsCount(encoding, len(text), units, 1 if text else 0, _SINGLE[encoding], _SINGLE[encoding] - units)
    capacity = _CONCATENATED[encoding]
    segments, used = 1, 0
    for cost in costs:  # an ESC pair or a surrogate pair never straddles two segments
        if used + cost > capacity:
            segments, used = segments + 1, 0
        used += cost
    return SmsCount(encoding, len(text), units, segments, capacity, capacity - used)


@dataclass
class LimitReport:
    """Counts to show, problems that refuse the content, warnings that only inform."""

    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.counts,
            "within_limits": not self.problems,
            "problems": [{"part": p, "reason": r} for p, r in self.problems],
            "warnings": [{"part": p, "reason": r} for p, r in self.warnings],
        }


def _length(report: LimitReport, parts: Mapping[str, str], part: str, limit: int) -> None:
    text = parts.get(part)
    if text is None:
        return
    report.counts[f"{part}_length"] = len(text)
    if len(text) > limit:
        report.problems.append((part, f"{len(text)} characters, more than the {limit} allowed"))


def _url(report: LimitReport, parts: Mapping[str, str], part: str, https_only: bool = False) -> None:
    url = parts.get(part)
    if not url:
        return
    schemes = ("https://",) if https_only else ("https://", "http://")
    if len(url) > URL_MAX:
        report.problems.append((part, f"URL of {len(url)} characters, more than {URL_MAX}"))
    elif "://" not in url or (https_only and not url.startswith(schemes)):
        report.problems.append((part, f"not an absolute URL{' with https' if https_only else ''}: {url[:80]!r}"))


def check_limits(channel: str, parts: Mapping[str, str]) -> LimitReport:
    """The limits of ``channel`` applied to rendered ``parts``."""
    report = LimitReport()
    if channel == "sms":
        count = sms_count(parts.get("body", ""))
        report.counts["sms"] = count.as_dict()
        if count.segments > SMS_MAX_SEGMENTS:
            report.problems.append(
                ("body", f"needs {count.segments} {count.encoding} segments, more than {SMS_MAX_SEGMENTS}")
            )
    elif channel == "push":
        _length(report, parts, "title", PUSH_TITLE_MAX)
        _length(report, parts, "body", PUSH_BODY_MAX)
        _url(report, parts, "action_url")
        _url(report, parts, "image_url", https_only=True)
        size = len(orjson.dumps(dict(parts)))
        report.counts["payload_bytes"] = size
        if size > PUSH_PAYLOAD_MAX_BYTES:
            report.problems.append(("body", f"push payload of {size} bytes, more than {PUSH_PAYLOAD_MAX_BYTES}"))
    elif channel == "in_app":
        _length(report, parts, "title", IN_APP_TITLE_MAX)
        _length(report, parts, "body", IN_APP_BODY_MAX)
        _url(report, parts, "action_url")
        _url(report, parts, "image_url", https_only=True)
    elif channel == "email":
        subject = parts.get("subject", "")
        report.counts["subject_length"] = len(subject)
        if len(subject) > EMAIL_SUBJECT_MAX:
            report.problems.append(("subject", f"{len(subject)} characters, more than {EMAIL_SUBJECT_MAX}"))
        elif len(subject) > EMAIL_SUBJECT_WARN:
            report.warnings.append(("subject", f"{len(subject)} characters; inboxes show about 40 to 80"))
        html_bytes = len(parts.get("html", "").encode())
        report.counts["html_bytes"] = html_bytes
        if html_bytes > EMAIL_HTML_WARN_BYTES:
            report.warnings.append(("html", f"{html_bytes} bytes; Gmail clips messages over 102 KB"))
    elif channel == "webhook":
        size = len(parts.get("payload", "").encode())
        report.counts["payload_bytes"] = size
        if size > WEBHOOK_PAYLOAD_MAX_BYTES:
            report.problems.append(("payload", f"{size} bytes, more than {WEBHOOK_PAYLOAD_MAX_BYTES}"))
    return report

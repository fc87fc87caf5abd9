"""Templates as data: which parts each channel has, per-language and per-variant versions, rendering.

A template holds its parts in its default language, optional translations and
optional A/B variants::

    {"channel": "email", "default_language": "en",
     "parts": {"subject": "Hi {{ first_name | default('there') }}", "html": "...", "text": "..."},
     "translations": {"fr": {"subject": "Bonjour ..."}, "pt": {...}},
     "variants": {"B": {"subject": "Last chance", "translations": {"fr": {"subject": "Dernière chance"}}}}}

Choosing the version for a user (``resolve_parts``):

1. the language: the user's ("pt-BR"), then its primary language ("pt"), then the
   template's default; the first one the template has wins;
2. the parts: the default-language parts, overlaid with that language's
   translation (a translation may leave out parts that need none, such as an
   action URL);
3. the variant: its overrides *in the chosen language* (its own parts for the
   default language, its ``translations`` entry for others). A variant written only
   in English does not put English text into a French message: the French
   user gets the French control text, and ``Rendered.variant`` says so (None).
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from jinja2 import Template, TemplateError

from pipeline.content.engine import (
    MISSING,
    Fields,
    MissingField,
    compile_part,
    render_compiled,
    render_parts,
    template_globals,
)

CHANNELS = ("email", "sms", "push", "in_app", "webhook")

# part -> environment kind, per channel (see pipeline.content.engine)
PART_KINDS: dict[str, dict[str, str]] = {
    "email": {"subject": "text", "html": "html", "text": "text"},
    "sms": {"body": "text"},
    "push": {"title": "text", "body": "text", "action_url": "text", "image_url": "text"},
    "in_app": {"title": "text", "body": "text", "action_url": "text", "image_url": "text"},
    "webhook": {"payload": "json"},
}
REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "email": ("subject",),  # and html or text, see missing_parts
    "sms": ("body",),
    "push": ("title", "body"),
    "in_app": ("title", "body"),
    "webhook": ("payload",),
}
# The spec's table shape (``templates.subject``, ``templates.body``): which part each field is, per
# channel. The inverse of the legacy subject/body columns kept beside the parts. An email's body is
# its HTML; the plain-text alternative is made from it at render time (``html_to_text``), so the two
# never drift apart.
TABLE_FIELDS: dict[str, dict[str, str]] = {
    "email": {"subject": "subject", "body": "html"},
    "sms": {"body": "body"},
    "push": {"subject": "title", "body": "body"},
    "in_app": {"subject": "title", "body": "body"},
    "webhook": {"body": "payload"},
}

# Filled from the user's profile. ``user`` is the whole profile (``user.first_name``,
# ``user.attributes.plan``); the others are shortcuts to its fields.
PROFILE_FIELDS = ("user_id", "first_name", "last_name", "email", "phone", "country", "language", "timezone")
USER_FIELDS = frozenset({*PROFILE_FIELDS, "attributes", "user"})
# Filled by Herald when it sends (and with stand-ins in previews).
SYSTEM_VARIABLES = frozenset({"unsubscribe_url", "campaign_id", "message_id", "variant"})


class RenderError(Exception):
    """A part could not be rendered for this message (a missing variable, a filter given bad input...)."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def missing_parts(channel: str, parts: Mapping[str, Any]) -> list[str]:
    """Required parts that ``parts`` lacks (empty strings count as missing)."""
    missing = [p for p in REQUIRED_PARTS[channel] if not parts.get(p)]
    if channel == "email" and not parts.get("html") and not parts.get("text"):
        missing.append("html")
    return missing


def language_key(language: str) -> str:
    """Languages compare case- and separator-insensitively: "pt_BR" == "pt-br"."""
    return language.replace("_", "-").lower()


def language_chain(requested: str | None, default: str) -> list[str]:
    """Where to look for a user's language: "pt-BR" -> ["pt-br", "pt", default]."""
    chain: list[str] = []
    if requested:
        key = language_key(requested)
        chain.append(key)
        primary = key.split("-")[0]
        if primary != key:
            chain.append(primary)
    chain.append(language_key(default))
    return list(dict.fromkeys(chain))


@dataclass(frozen=True)
class TemplateContent:
    """A template's content as stored (the ``channel``, ``parts``, ... of GET /templates/{id})."""

    channel: str
    parts: Mapping[str, str]
    default_language: str = "en"
    translations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TemplateContent:
        return cls(
            channel=record["channel"],
            parts=dict(record["parts"]),
            default_language=record.get("default_language") or "en",
            translations=dict(record.get("translations") or {}),
            variants=dict(record.get("variants") or {}),
        )

    def language_for(self, requested: str | None) -> str:
        """The language this template will use for a user asking for ``requested`` (as the template spells it)."""
        available = {language_key(code): code for code in self.translations}
        default_key = language_key(self.default_language)
        for key in language_chain(requested, self.default_language):
            if key == default_key:
                return self.default_language
            if key in available:
                return available[key]
        return self.default_language


def variant_overrides(variant: Mapping[str, Any], language: str, default_language: str) -> Mapping[str, str] | None:
    """A variant's parts in ``language``, or None if the variant has none in that language."""
    if language_key(language) == language_key(default_language):
        own = {k: v for k, v in variant.items() if k != "translations"}
        return own or None
    for code, parts in (variant.get("translations") or {}).items():
        if language_key(code) == language_key(language):
            return parts
    return None


def resolve_parts(
    content: TemplateContent, language: str | None, variant: str | None
) -> tuple[dict[str, str], str, str | None]:
    """The source of each part for a user: (parts, language used, variant applied or None)."""
    chosen = content.language_for(language)
    parts = dict(content.parts)
    if chosen != content.default_language:
        parts.update(content.translations[chosen])
    applied = None
    if variant is not None and variant in content.variants:
        overrides = variant_overrides(content.variants[variant], chosen, content.default_language)
        if overrides:
            parts.update(overrides)
            applied = variant
    return {k: v for k, v in parts.items() if v is not None}, chosen, applied


def versions(content: TemplateContent) -> Iterator[tuple[str, str, str | None, Mapping[str, str]]]:
    """Every stored version as (field path of its source, language, variant, its own raw parts)."""
    yield "parts", content.default_language, None, content.parts
    for code, parts in content.translations.items():
        yield f"translations.{code}", code, None, parts
    for name, variant in content.variants.items():
        own = {k: v for k, v in variant.items() if k != "translations"}
        yield f"variants.{name}", content.default_language, name, own
        for code, parts in (variant.get("translations") or {}).items():
            yield f"variants.{name}.translations.{code}", code, name, parts


# ---- what a message is rendered with ---------------------------------------------------


def user_variables(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The profile fields as template variables: ``first_name`` ..., ``attributes``, and ``user``."""
    user = Fields()
    for name in PROFILE_FIELDS:
        value = profile.get(name)
        if value is not None and value != "":
            user[name] = value
    attributes = Fields(profile.get("attributes") or {})
    user["attributes"] = attributes
    variables: dict[str, Any] = {name: user.get(name, MISSING) for name in PROFILE_FIELDS}
    variables["attributes"] = attributes
    variables["user"] = user
    return variables


def message_variables(
    profile: Mapping[str, Any],
    variables: Mapping[str, Any] | None = None,
    system: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything one message is rendered with. Profile fields win over a campaign variable of the same name."""
    merged: dict[str, Any] = dict(variables or {})
    for name in SYSTEM_VARIABLES:
        merged[name] = (system or {}).get(name, MissingField(name=name))
    merged.update(user_variables(profile))
    return merged


# ---- rendering --------------------------------------------------------------------------

_BLOCK_END = re.compile(r"(?i)<br\s*/?>|</(p|div|h[1-6]|li|tr|table|blockquote)>")
_LINK = re.compile(r'(?is)<a\s[^>]*href=["\']([^"\']+)["\'][^>]*>(.*?)</a>')
_DROP = re.compile(r"(?is)<(style|script|head)[^>]*>.*?</\1>")
_TAG = re.compile(r"(?s)<[^>]+>")
_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_SPACES = re.compile(r"[ \t]+")


def html_to_text(html: str) -> str:
    """A plain-text alternative for an email that has only HTML: links kept as "text (url)"."""
    text = _DROP.sub("", html)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(1) not in m.group(2) else m.group(2), text)
    text = _BLOCK_END.sub("\n", text)
    text = html_lib.unescape(_TAG.sub("", text))
    text = _SPACES.sub(" ", text)
    return _BLANKS.sub("\n\n", "\n".join(line.strip() for line in text.splitlines())).strip()


@dataclass(frozen=True, slots=True)
class Rendered:
    parts: dict[str, str]
    language: str
    variant: str | None


@dataclass(frozen=True, slots=True)
class _Version:
    language: str
    variant: str | None
    parts: tuple[tuple[str, Template], ...]
    globals: dict[str, Any]


def _finish(channel: str, parts: dict[str, str]) -> dict[str, str]:
    """Channel rules applied to rendered text (headers cannot hold newlines, payloads must be JSON)."""
    if channel == "email":
        parts["subject"] = " ".join(parts.get("subject", "").split())
        if "text" not in parts and "html" in parts:
            parts["text"] = html_to_text(parts["html"])
    elif channel == "webhook":
        try:
            orjson.loads(parts["payload"])
        except orjson.JSONDecodeError as exc:
            raise RenderError("payload", f"not valid JSON after rendering: {exc}") from None
    else:
        for name in ("title", "body", "action_url", "image_url"):
            if name in parts:
                parts[name] = parts[name].strip()
    return parts


class CompiledTemplate:
    """A template ready to render many messages: each (language, variant) version is compiled once."""

    def __init__(self, content: TemplateContent) -> None:
        self.content = content
        self.kinds = PART_KINDS[content.channel]
        self._versions: dict[tuple[str | None, str | None], _Version] = {}

    def _version(self, language: str | None, variant: str | None) -> _Version:
        key = (language, variant)
        found = self._versions.get(key)
        if found is None:
            parts, chosen, applied = resolve_parts(self.content, language, variant)
            compiled = tuple(
                (name, compile_part(self.kinds[name], source, chosen))
                for name, source in parts.items()
                if name in self.kinds
            )
            found = self._versions[key] = _Version(chosen, applied, compiled, template_globals(chosen))
        return found

    def render(self, variables: dict[str, Any], language: str | None = None, variant: str | None = None) -> Rendered:
        """Render every part for one message; raises RenderError naming the part that failed."""
        version = self._version(language, variant)
        try:
            parts = render_parts(version.parts, version.globals, variables)
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            # Which part failed: render them one by one (the failure path only).
            for name, template in version.parts:
                try:
                    render_compiled(template, {**version.globals, **variables})
                except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as failure:
                    raise RenderError(name, _reason(failure)) from None
            raise RenderError(version.parts[0][0] if version.parts else "?", _reason(exc)) from None
        return Rendered(_finish(self.content.channel, parts), version.language, version.variant)


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return message if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {message}"


def estimate_parts(channel: str, parts: Mapping[str, str]) -> dict[str, str]:
    """``parts`` rendered with a sample profile and ``{name}`` for every campaign variable (limits at save time).

    A part that cannot be rendered without real values is left out; saving
    checks syntax, the real render is checked by preview and at send time.
    """
    sample = message_variables(SAMPLE_PROFILE)
    kinds = PART_KINDS[channel]
    rendered: dict[str, str] = {}
    for name, source in parts.items():
        if name not in kinds or not isinstance(source, str):
            continue
        try:
            rendered[name] = render_compiled(compile_part(kinds[name], source, estimating=True), dict(sample))
        except Exception:  # noqa: BLE001 - an estimate, nothing more
            continue
    if channel == "webhook":
        return rendered
    try:
        return _finish(channel, rendered)
    except RenderError:
        return rendered


SAMPLE_PROFILE: Mapping[str, Any] = {
    "user_id": 1000001,
    "first_name": "Alex",
    "last_name": "Martin",
    "email": "alex.martin@example.com",
    "phone": "+15555550123",
    "country": "US",
    "language": "en",
    "timezone": "America/New_York",
    "attributes": {"plan": "premium", "lifetime_value": 1234.5, "purchase_count": 7},
}

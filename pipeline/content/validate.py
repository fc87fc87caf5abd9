"""Is a template's content acceptable? Every problem as (field path, reason), for one 422.

Checked when a template is created or changed, before anything is stored:

- every part belongs to the channel, is text (a webhook payload may be given as
  a JSON object: it is stored as its JSON text, whose strings may hold ``{{ }}``),
  and the channel's required parts are there;
- languages and variant names are well formed; a translation is not the default
  language again; a variant's translation has a translation of the template to
  belong to (otherwise it could never be chosen, see ``model.resolve_parts``);
- every version parses (``analysis.template_syntax_problems``);
- every version, rendered with a sample profile and ``{name}`` for campaign
  variables, fits the channel's limits (``limits.check_limits``).

Field paths name where the text lives: ``parts.body``,
``translations.fr.subject``, ``variants.B.translations.fr.title``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from pipeline.content.analysis import template_syntax_problems
from pipeline.content.limits import check_limits
from pipeline.content.model import (
    PART_KINDS,
    TABLE_FIELDS,
    TemplateContent,
    estimate_parts,
    language_key,
    missing_parts,
    resolve_parts,
)

LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
VARIANT = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_PART_CHARS = 200_000


def normalize_parts(channel: str, parts: Any) -> Any:
    """A webhook payload given as a JSON object or array becomes its JSON text; everything else is unchanged."""
    if channel == "webhook" and isinstance(parts, Mapping) and isinstance(parts.get("payload"), (dict, list)):
        return {**parts, "payload": orjson.dumps(parts["payload"]).decode()}
    return parts


def table_shape_parts(
    channel: str, fields: Mapping[str, Any], parts_given: bool = False
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The spec's ``subject`` / ``body`` fields as the channel's parts, and every problem naming its field.

    ``fields`` holds only the fields given; ``parts_given`` says the caller gave
    ``parts`` as well, which is one shape too many.
    """
    mapping = TABLE_FIELDS[channel]
    problems = []
    for name in fields:
        if parts_given:
            problems.append((name, "give the text either as parts or as subject and body, not both"))
        elif name not in mapping:
            has = " and ".join(mapping)
            problems.append((name, f"{channel} templates have no {name}; in this shape they have {has}"))
    return {mapping[name]: text for name, text in fields.items() if name in mapping}, problems


def _part_problems(channel: str, where: str, parts: Any, allow_translations: bool = False) -> list[tuple[str, str]]:
    if not isinstance(parts, Mapping):
        return [(where, "an object of parts")]
    problems = []
    allowed = PART_KINDS[channel]
    for name, text in parts.items():
        if name == "translations" and allow_translations:
            continue
        if name not in allowed:
            problems.append((f"{where}.{name}", f"not a part of {channel} templates; parts are {', '.join(allowed)}"))
        elif text is not None and not isinstance(text, str):
            problems.append((f"{where}.{name}", "template text (a string)"))
        elif isinstance(text, str) and len(text) > MAX_PART_CHARS:
            problems.append((f"{where}.{name}", f"{len(text)} characters, more than {MAX_PART_CHARS}"))
    return problems


def _texts(parts: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in parts.items() if isinstance(v, str) and k != "translations"}


def content_problems(content: TemplateContent) -> list[tuple[str, str]]:
    """Every problem with ``content``; empty when it can be stored."""
    channel = content.channel
    problems = _part_problems(channel, "parts", content.parts)
    if not problems:
        problems += [(f"parts.{name}", "required") for name in missing_parts(channel, content.parts)]
    if not LANGUAGE.fullmatch(content.default_language or ""):
        problems.append(("default_language", "a language code such as en, fr or pt-BR"))
    default_key = language_key(content.default_language or "")

    translated = set()
    for code, parts in content.translations.items():
        where = f"translations.{code}"
        if not LANGUAGE.fullmatch(code):
            problems.append((where, "a language code such as fr or pt-BR"))
        elif language_key(code) == default_key:
            problems.append((where, "this is the default language; its text belongs in parts"))
        elif language_key(code) in translated:
            problems.append((where, "the same language is translated twice"))
        translated.add(language_key(code))
        problems += _part_problems(channel, where, parts)

    for name, variant in content.variants.items():
        where = f"variants.{name}"
        if not VARIANT.fullmatch(name):
            problems.append((where, "a variant name of letters, digits, - or _ (such as B)"))
        problems += _part_problems(channel, where, variant, allow_translations=True)
        if not isinstance(variant, Mapping):
            continue
        variant_translations = variant.get("translations") or {}
        if not isinstance(variant_translations, Mapping):
            problems.append((f"{where}.translations", "an object of language -> parts"))
            continue
        for code, parts in variant_translations.items():
            if language_key(code) not in translated:
                problems.append((f"{where}.translations.{code}", f"the template has no {code} translation to vary"))
            problems += _part_problems(channel, f"{where}.translations.{code}", parts)

    if problems:  # the rest needs well-formed content
        return problems
    problems += _syntax(content)
    if problems:
        return problems
    return _limits(content)


def sources(content: TemplateContent) -> list[tuple[str, Mapping[str, str]]]:
    """Every stored block of text as (field path, {part: text}): parts, translations, variants and theirs."""
    found = [("parts", _texts(content.parts))]
    found += [(f"translations.{code}", _texts(parts)) for code, parts in content.translations.items()]
    for name, variant in content.variants.items():
        found.append((f"variants.{name}", _texts(variant)))
        for code, parts in (variant.get("translations") or {}).items():
            found.append((f"variants.{name}.translations.{code}", _texts(parts)))
    return found


def _syntax(content: TemplateContent) -> list[tuple[str, str]]:
    return [
        (f"{where}.{part}", reason)
        for where, texts in sources(content)
        for part, reason in template_syntax_problems(texts)
    ]


def _limits(content: TemplateContent) -> list[tuple[str, str]]:
    """Limits of each stored version, blamed on the text that version adds."""
    problems: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    versions = [(None, None, "parts")]
    versions += [(code, None, f"translations.{code}") for code in content.translations]
    for name, variant in content.variants.items():
        versions.append((content.default_language, name, f"variants.{name}"))
        for code in variant.get("translations") or {}:
            versions.append((code, name, f"variants.{name}.translations.{code}"))
    for language, variant, where in versions:
        parts, _, _ = resolve_parts(content, language, variant)
        own = set(_texts(dict(sources(content))[where]))
        for part, reason in check_limits(content.channel, estimate_parts(content.channel, parts)).problems:
            field = f"{where}.{part}" if part in own else f"parts.{part}"
            if (field, reason) not in seen:
                seen.add((field, reason))
                problems.append((field, f"{reason} (estimated with a sample profile)"))
    return problems


def estimated_limits(content: TemplateContent) -> dict[str, Any]:
    """Counts of the default version rendered with a sample profile (shown when a template is saved)."""
    parts, _, _ = resolve_parts(content, None, None)
    return check_limits(content.channel, estimate_parts(content.channel, parts)).as_dict()


def all_texts(content: TemplateContent) -> dict[str, str]:
    """Every piece of template text by its field path ("translations.fr.subject")."""
    return {f"{where}.{part}": text for where, texts in sources(content) for part, text in texts.items()}

"""The sandboxed Jinja2 environments every template is compiled in, and their filters.

Three environments, one per kind of output:

    html     autoescaped (email html): a first name of "<script>" arrives as text
    text     not escaped (email text, SMS, push, in-app)
    json     every ``{{ }}`` output is escaped for a JSON string (webhook payloads), except
             values already serialized with ``tojson``, so ``"name": "{{ first_name }}"``
             stays valid JSON whatever the name holds

All of them are ``ImmutableSandboxedEnvironment``s: no attribute starting with
``_``, no calls to unsafe functions, and no mutation of the lists and dicts
handed in (a profile is shared by every part rendered for it). ``*`` and ``**``
are bounded so ``{{ "x" * 10**9 }}`` cannot take a worker's memory.

Undefined names: a campaign variable that is not provided is an error when it
is printed or compared (``StrictUndefined``'s rule), but it is false in
``{% if x %}``, passes ``default``, and attribute access on it chains
(``{{ a.b | default("-") }}``). Profile fields a user lacks are ``MissingField``:
empty when printed, still replaced by ``default``. A template is checked once
but rendered for millions of profiles that differ in which fields they carry;
a gap in one profile must not fail that user's message.

Compiled templates are cached by (environment, language, source): compiling
costs about a millisecond, rendering a few microseconds (``render_parts``).
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from jinja2 import Template, Undefined, pass_context
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

MAX_REPEAT = 100_000  # longest string or list a template may build with *
MAX_EXPONENT = 100


class StrictVariable(Undefined):
    """An unknown campaign variable: fails when used as a value, false in a test, chains on attributes."""

    __slots__ = ()
    __iter__ = __str__ = __len__ = Undefined._fail_with_undefined_error
    __eq__ = __ne__ = __hash__ = __contains__ = Undefined._fail_with_undefined_error

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__":
            raise AttributeError(name)
        return self

    def __getitem__(self, name: Any) -> StrictVariable:
        return self


class MissingField(Undefined):
    """A profile field or attribute this user does not have: prints as "", false, ``default`` replaces it."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__":
            raise AttributeError(name)
        return self

    def __getitem__(self, name: Any) -> MissingField:
        return self


class Placeholder(MissingField):
    """Used only to estimate lengths when a template is saved: prints as ``{name}``."""

    __slots__ = ()

    def __str__(self) -> str:
        return "{%s}" % (self._undefined_name or "value")


MISSING = MissingField()


class Fields(dict):
    """A profile (``user``) or its ``attributes``: a name this user lacks is a ``MissingField``, not an error."""

    def __missing__(self, key: Any) -> MissingField:
        return MissingField(name=str(key))


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
            return left**right
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                raise SecurityError(f"a repetition of more than {MAX_REPEAT} items")
        return operator.mul(left, right)


# ---- filters -----------------------------------------------------------------------------

# (thousands separator, decimal separator, symbol first?) by primary language.
_NUMBER_STYLE = {
    "en": (",", ".", True), "ja": (",", ".", True), "zh": (",", ".", True), "ko": (",", ".", True),
    "he": (",", ".", True), "th": (",", ".", True), "hi": (",", ".", True),
    "de": (".", ",", False), "es": (".", ",", False), "it": (".", ",", False), "nl": (".", ",", True),
    "pt": (".", ",", False), "id": (".", ",", True), "tr": (".", ",", False), "da": (".", ",", False),
    "fr": ("\u202f", ",", False), "sv": ("\u00a0", ",", False), "nb": ("\u00a0", ",", False),
    "no": ("\u00a0", ",", False), "fi": ("\u00a0", ",", False), "pl": ("\u00a0", ",", False),
    "cs": ("\u00a0", ",", False), "ru": ("\u00a0", ",", False), "uk": ("\u00a0", ",", False),
}
_CURRENCY_SYMBOL = {
    "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "CHF": "CHF", "SEK": "kr",
    "NOK": "kr", "DKK": "kr", "INR": "₹", "BRL": "R$", "MXN": "MX$", "SGD": "S$", "NZD": "NZ$", "CNY": "CN¥",
}
_ZERO_DECIMALS = frozenset({"JPY", "KRW", "ISK", "CLP", "VND"})
_DATE_STYLES = {"short": "%Y-%m-%d", "medium": "%b %-d, %Y", "long": "%B %-d, %Y", "full": "%A, %B %-d, %Y",
                "datetime": "%Y-%m-%d %H:%M", "time": "%H:%M"}


def _style(context: Context) -> tuple[str, str, bool]:
    # The language the text is written in (a template global), else the user's.
    language = context.get("content_language") or context.get("language")
    primary = str(language).split("-")[0].split("_")[0].lower() if isinstance(language, str) else "en"
    return _NUMBER_STYLE.get(primary, _NUMBER_STYLE["en"])


def _as_number(value: Any) -> float | int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, (int, float)):
        return value
    return float(str(value).strip())


def _format_number(value: float | int, decimals: int, thousands: str, point: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = f"{value:,.{decimals}f}"
    return text.replace(",", "\0").replace(".", point).replace("\0", thousands)


@pass_context
def number_filter(context: Context, value: Any, decimals: int = 0) -> Any:
    """``{{ points | number }}`` -> "12,345" (separators follow the user's language)."""
    if isinstance(value, Undefined):
        return value
    thousands, point, _ = _style(context)
    return _format_number(_as_number(value), int(decimals), thousands, point)


@pass_context
def currency_filter(context: Context, value: Any, code: str = "USD", decimals: int | None = None) -> Any:
    """``{{ 1234.5 | currency("EUR") }}`` -> "€1,234.50" in English, "1.234,50 €" in German."""
    if isinstance(value, Undefined):
        return value
    code = str(code).upper()
    places = (0 if code in _ZERO_DECIMALS else 2) if decimals is None else int(decimals)
    thousands, point, symbol_first = _style(context)
    amount = _format_number(abs(_as_number(value)), places, thousands, point)
    symbol = _CURRENCY_SYMBOL.get(code, code)
    sign = "-" if _as_number(value) < 0 else ""
    return f"{sign}{symbol}{amount}" if symbol_first else f"{sign}{amount}\u00a0{symbol}"


def _as_datetime(value: Any) -> datetime | date:
    if isinstance(value, (datetime, date)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise TypeError(f"not a date: {str(value)[:40]!r}") from None


@pass_context
def date_filter(context: Context, value: Any, style: str = "medium", tz: str | None = None) -> Any:
    """``{{ order.date | date("long") }}`` or ``date("%d/%m/%Y")``; times shown in the user's time zone."""
    if isinstance(value, Undefined):
        return value
    moment = _as_datetime(value)
    if isinstance(moment, datetime):
        zone_name = tz or context.get("timezone")
        if isinstance(zone_name, str) and zone_name:
            try:
                zone = ZoneInfo(zone_name)
            except (ZoneInfoNotFoundError, ValueError):
                zone = None
            if zone is not None:
                moment = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(zone)
    pattern = _DATE_STYLES.get(style, style)
    if "%" not in pattern:
        raise TypeError(f"unknown date style {style!r}; use one of {sorted(_DATE_STYLES)} or a strftime pattern")
    return moment.strftime(pattern)


def _json_string_escape(value: Any) -> Any:
    """``finalize`` of the json environment: outputs land inside JSON strings, so escape them for one."""
    if isinstance(value, Markup) or isinstance(value, Undefined):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    return orjson.dumps(str(value)).decode()[1:-1]


def _tojson(value: Any) -> Markup:
    return Markup(orjson.dumps(value, default=str).decode())


def _build(kind: str, undefined: type[Undefined]) -> _Sandbox:
    env = _Sandbox(
        autoescape=kind == "html",
        undefined=undefined,
        finalize=_json_string_escape if kind == "json" else None,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=0,  # we keep our own cache of compiled templates
    )
    env.filters.update(number=number_filter, currency=currency_filter, date=date_filter, tojson=_tojson)
    # Templates render one message; they do not loop over generated data or build other templates.
    for name in ("lipsum", "cycler", "joiner", "namespace"):
        env.globals.pop(name, None)
    return env


KINDS = ("html", "text", "json")
ENVIRONMENTS = {kind: _build(kind, StrictVariable) for kind in KINDS}
_ESTIMATING = {kind: _build(kind, Placeholder) for kind in KINDS}


class _Lru(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: Any, value: Any) -> Any:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value


_compiled: _Lru = _Lru(4096)


def compile_part(kind: str, source: str, language: str | None = None, estimating: bool = False) -> Template:
    """The compiled template for ``source`` written in ``language`` (raises TemplateSyntaxError), cached.

    The language becomes the template global ``content_language``, which the
    number, currency and date filters format for.
    """
    key = (kind, estimating, language, source)
    found = _compiled.get(key)
    if found is not None:
        return found
    env = (_ESTIMATING if estimating else ENVIRONMENTS)[kind]
    return _compiled.remember(key, env.from_string(source, globals={"content_language": language}))


def render_compiled(template: Template, variables: dict[str, Any]) -> str:
    """Render with ``variables`` as the context; errors surface as jinja2 exceptions (see RenderError)."""
    context = template.new_context(variables)
    return template.environment.concat(template.root_render_func(context))  # type: ignore[attr-defined]


def render_parts(parts: tuple[tuple[str, Template], ...], template_globals: dict[str, Any],
                 variables: dict[str, Any]) -> dict[str, str]:
    """Render several templates of one message over one shared context per environment.

    ``Template.render`` builds a fresh context per call, merging globals and
    variables (about 4 µs, ten times the rendering itself). One message's
    parts share their variables, so the merged dict is built once and one
    ``Context`` serves every part of the same environment. Templates with
    ``{% block %}``s need their own context (blocks live on it).
    """
    parent = template_globals.copy()
    parent.update(variables)
    contexts: dict[int, Context] = {}
    out: dict[str, str] = {}
    for name, template in parts:
        env = template.environment
        if template.blocks:
            context = template.new_context(parent, shared=True)
        else:
            context = contexts.get(id(env))
            if context is None:
                context = contexts[id(env)] = Context(env, parent, None, {}, template_globals)
        out[name] = env.concat(template.root_render_func(context))  # type: ignore[attr-defined]
    return out


def template_globals(language: str | None) -> dict[str, Any]:
    """The globals every template of a version sees (the environments' own, plus ``content_language``)."""
    return {**ENVIRONMENTS["text"].globals, "content_language": language}


__all__ = [
    "ENVIRONMENTS", "KINDS", "MISSING", "Fields", "MissingField", "Placeholder", "SecurityError",
    "StrictVariable", "UndefinedError", "compile_part", "render_compiled", "render_parts", "template_globals",
]

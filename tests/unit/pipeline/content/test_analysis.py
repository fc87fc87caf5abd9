"""Syntax problems and unresolved variables, read from the template's AST."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.templates import (
    USER_FIELDS,
    CompiledTemplate,
    RenderError,
    TemplateContent,
    campaign_variables,
    message_variables,
    template_syntax_problems,
    unresolved_variables,
)


def test_a_syntax_error_names_the_part_the_reason_and_the_line():
    assert template_syntax_problems({"subject": "ok {{ x }}", "body": "{{ x }"}) == [("body", "unexpected '}' at line 1")]
    [(part, reason)] = template_syntax_problems({"html": "a\nb\n{% if x %}never closed"})
    assert part == "html" and reason.endswith("at line 3")


def test_unknown_filters_and_template_includes_are_problems():
    problems = dict(template_syntax_problems({"a": "{{ x | explode }}", "b": "{% include 'other.html' %}",
                                              "c": "{% extends 'base' %}"}))
    assert "explode" in problems["a"] and "include" in problems["b"] and "extend" in problems["c"]


@pytest.mark.parametrize("source, provided, expected", [
    ("{{ code }}", {}, ["code"]),
    ("{{ code }}", {"code": "X"}, []),
    ("{{ first_name }} {{ user.email }} {{ attributes.plan }} {{ unsubscribe_url }}", {}, []),
    ("{{ code | default('none') }}", {}, []),
    ("{{ code.value | default('none') }}", {}, []),
    ("{% if code %}Use {{ code }}{% endif %}", {}, []),
    ("{% if code %}{% else %}{{ code }}{% endif %}", {}, ["code"]),
    ("{% if code is defined %}{{ code }}{% endif %}", {}, []),
    ("{% if code and offer %}{{ code }} {{ offer.name }}{% endif %}", {}, []),
    ("{% if code or offer %}{{ code }}{% endif %}", {}, ["code"]),
    ("{% if points > 10 %}gold{% endif %}", {}, ["points"]),
    ("{{ code if code else 'none' }}", {}, []),
    ("{% for item in items %}{{ item.name }}{% endfor %}", {}, ["items"]),
    ("{% set greeting = 'hi' %}{{ greeting }}", {}, []),
    ("{{ price | currency(currency_code) }}", {"price": 1}, ["currency_code"]),
    ("{{ b }} {{ a }} {{ b }}", {}, ["a", "b"]),
])
def test_unresolved_variables(source, provided, expected):
    assert unresolved_variables({"body": source}, provided) == expected


def test_unresolved_variables_span_every_part_and_ignore_broken_ones():
    assert unresolved_variables({"subject": "{{ a }}", "text": "{{ b }}", "html": "{{ broken }"}, {}) == ["a", "b"]


def test_campaign_variables_lists_guarded_ones_too_but_not_profile_fields():
    assert campaign_variables({"body": "{{ first_name }} {{ code | default('x') }} {% if vip %}{% endif %}"}) == ["code", "vip"]
    assert {"first_name", "email", "user", "attributes"} <= USER_FIELDS


FRAGMENTS = [
    "{{ a }}", "{{ a | default('x') }}", "{% if a %}{{ a }}{% endif %}", "{% if a %}{% else %}{{ a }}{% endif %}",
    "{{ b.c }}", "{{ b.c | default('-') }}", "{% if b is defined %}{{ b.c }}{% endif %}", "{{ a if a else b }}",
    "{% if a and b %}{{ b }}{% endif %}", "{% if a or b %}{{ a }}{% endif %}", "{% for x in items %}{{ x }}{% endfor %}",
    "{% if a > 1 %}big{% endif %}", "{{ first_name }}", "{{ user.attributes.plan | default('free') }}",
    "{{ (a ~ 'x') | default('y') }}", "{% set v = a | default(1) %}{{ v }}", "plain text",
]


@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4),
       st.dictionaries(st.sampled_from(["a", "b", "items"]),
                       st.sampled_from([0, 2, "", "s", [1], {"c": 1}]), max_size=3))
@settings(max_examples=300, deadline=None)
def test_a_template_with_nothing_unresolved_never_fails_for_lack_of_a_variable(fragments, provided):
    source = " ".join(fragments)
    if unresolved_variables({"body": source}, provided):
        return
    template = CompiledTemplate(TemplateContent("sms", {"body": source}))
    try:
        template.render(message_variables({"user_id": 1}, provided))
    except RenderError as exc:
        assert "undefined" not in exc.reason, (source, provided, exc.reason)

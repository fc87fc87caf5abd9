"""Rendering: personalization, escaping, language fallback, variants, filters and the sandbox."""

from __future__ import annotations

import orjson
import pytest

from pipeline.templates import CompiledTemplate, RenderError, TemplateContent, message_variables, resolve_parts

PROFILE = {"user_id": 7, "first_name": "Zoé", "last_name": "Martin", "email": "zoe@example.com", "country": "FR",
           "language": "fr", "timezone": "Europe/Paris", "attributes": {"plan": "gold", "points": 12345}}


def render(channel: str, parts: dict, profile: dict = PROFILE, variables: dict | None = None, language=None,
           variant=None, **content):
    template = CompiledTemplate(TemplateContent(channel=channel, parts=parts, **content))
    return template.render(message_variables(profile, variables), language, variant)


def test_profile_fields_attributes_and_user_object_are_variables():
    out = render("sms", {"body": "{{ first_name }} {{ user.last_name }} {{ attributes.plan }} {{ user.attributes.points }}"})
    assert out.parts["body"] == "Zoé Martin gold 12345"


def test_html_parts_are_escaped_and_text_parts_are_not():
    profile = {**PROFILE, "first_name": "<b>Zo&</b>"}
    out = render("email", {"subject": "Hi {{ first_name }}", "html": "<p>{{ first_name }}</p>", "text": "{{ first_name }}"},
                 profile)
    assert out.parts["html"] == "<p>&lt;b&gt;Zo&amp;&lt;/b&gt;</p>"
    assert out.parts["text"] == "<b>Zo&</b>" and out.parts["subject"] == "Hi <b>Zo&</b>"


def test_a_missing_campaign_variable_is_an_error_naming_the_part():
    with pytest.raises(RenderError) as caught:
        render("email", {"subject": "Use {{ code }}", "text": "x"})
    assert caught.value.part == "subject" and "'code' is undefined" in caught.value.reason


def test_default_filter_and_if_guard_cover_a_missing_variable():
    parts = {"body": "{{ code | default('NONE') }}{% if promo %} {{ promo }}{% endif %}{{ a.b | default('-') }}"}
    assert render("sms", parts).parts["body"] == "NONE-"
    assert render("sms", parts, variables={"promo": "P1", "code": "C"}).parts["body"] == "C P1-"


def test_profile_fields_a_user_lacks_render_empty_or_their_default():
    out = render("sms", {"body": "[{{ first_name }}][{{ last_name | default('friend') }}][{{ attributes.tier | default('std') }}]"},
                 {"user_id": 9})
    assert out.parts["body"] == "[][friend][std]"


def test_language_falls_back_from_region_to_language_to_default():
    parts = {"body": "hello"}
    translations = {"pt": {"body": "olá"}, "fr-CA": {"body": "allo"}}
    assert render("sms", parts, language="pt-BR", translations=translations).parts["body"] == "olá"
    assert render("sms", parts, language="pt_br", translations=translations).parts["body"] == "olá"
    assert render("sms", parts, language="fr-CA", translations=translations).parts["body"] == "allo"
    out = render("sms", parts, language="de-AT", translations=translations)
    assert out.parts["body"] == "hello" and out.language == "en"


def test_a_translation_inherits_the_parts_it_does_not_translate():
    out = render("push", {"title": "Hi", "body": "Sale", "action_url": "app://sale"}, language="fr",
                 translations={"fr": {"title": "Salut", "body": "Soldes"}})
    assert out.parts == {"title": "Salut", "body": "Soldes", "action_url": "app://sale"}


def test_variant_overrides_apply_in_their_language_only():
    content = dict(translations={"fr": {"subject": "Bonjour"}},
                   variants={"B": {"subject": "Hello B", "translations": {"fr": {"subject": "Bonjour B"}}},
                             "C": {"subject": "Hello C"}})
    parts = {"subject": "Hello", "text": "body"}
    assert render("email", parts, language="en", variant="B", **content).parts["subject"] == "Hello B"
    assert render("email", parts, language="fr", variant="B", **content).parts["subject"] == "Bonjour B"
    french_c = render("email", parts, language="fr", variant="C", **content)
    assert french_c.parts["subject"] == "Bonjour" and french_c.variant is None
    assert render("email", parts, language="en", variant="Z", **content).parts["subject"] == "Hello"


def test_resolve_parts_reports_language_and_variant_used():
    content = TemplateContent("sms", {"body": "x"}, "en", {"es": {"body": "y"}}, {"B": {"body": "z"}})
    assert resolve_parts(content, "es-MX", None) == ({"body": "y"}, "es", None)
    assert resolve_parts(content, None, "B") == ({"body": "z"}, "en", "B")


def test_number_currency_and_date_filters_follow_the_text_language():
    parts = {"body": "{{ attributes.points | number }} {{ 1234.5 | currency('EUR') }} {{ '2024-06-01T22:30:00Z' | date('long') }}"}
    english = render("sms", parts, language="en")
    assert english.parts["body"] == "12,345 €1,234.50 June 2, 2024"  # 22:30 UTC is the 2nd in Paris
    german = render("sms", parts, language="de", translations={"de": parts})
    assert german.parts["body"] == "12.345 1.234,50\u00a0€ June 2, 2024"
    assert render("sms", {"body": "{{ 1500 | currency('JPY') }}"}).parts["body"] == "¥1,500"


def test_title_upper_and_strftime_dates():
    out = render("sms", {"body": "{{ first_name | upper }} {{ 'big sale' | title }} {{ '2024-01-05' | date('%d/%m/%Y') }}"})
    assert out.parts["body"] == "ZOÉ Big Sale 05/01/2024"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ user.__class__ }}",
    "{{ attributes.update({'plan': 'free'}) }}",
    "{{ 'x' * 1000000 }}",
    "{{ 9 ** 999999 }}",
    "{{ range(10**9) | list }}",
])
def test_the_sandbox_refuses_unsafe_operations(source):
    profile = {**PROFILE, "attributes": {"plan": "gold"}}
    with pytest.raises(RenderError) as caught:
        render("sms", {"body": source}, profile)
    assert caught.value.part == "body"
    assert profile["attributes"] == {"plan": "gold"}


def test_webhook_payload_values_are_escaped_for_json():
    profile = {**PROFILE, "first_name": 'Zo"é\\\n'}
    payload = '{"name": "{{ first_name }}", "points": {{ attributes.points }}, "tags": {{ ["a", first_name] | tojson }}}'
    out = render("webhook", {"payload": payload}, profile)
    assert orjson.loads(out.parts["payload"]) == {"name": 'Zo"é\\\n', "points": 12345, "tags": ["a", 'Zo"é\\\n']}


def test_webhook_payload_that_is_not_json_after_rendering_is_an_error():
    with pytest.raises(RenderError) as caught:
        render("webhook", {"payload": '{"a": {{ first_name | default("x") }}}'}, {"user_id": 1})
    assert caught.value.part == "payload"


def test_email_subject_cannot_carry_newlines_and_text_is_derived_from_html():
    out = render("email", {"subject": "Hi\r\nBcc: x@evil {{ first_name }}",
                           "html": "<style>p{}</style><h1>Sale</h1><p>Hi &amp; <a href=\"https://s.example/x\">shop</a></p>"})
    assert out.parts["subject"] == "Hi Bcc: x@evil Zoé"
    assert out.parts["text"] == "Sale\nHi & shop (https://s.example/x)"


def test_compiled_versions_are_reused():
    template = CompiledTemplate(TemplateContent("sms", {"body": "{{ first_name }}"}))
    template.render(message_variables(PROFILE), "en")
    first = template._versions[("en", None)]
    template.render(message_variables({**PROFILE, "first_name": "Al"}), "en")
    assert template._versions[("en", None)] is first

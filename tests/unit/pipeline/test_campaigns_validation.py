"""Validation helpers of pipeline.campaigns: each problem names its field."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest

from pipeline.campaigns import (
    ab_test_problems,
    budget_problems,
    channel_problems,
    content_problems,
    delivery_problems,
    estimated_cost,
    next_run,
    schedule_problems,
    template_ids,
    type_problems,
    window_problems,
)

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)
COSTS = {"email": 0.001, "sms": 0.0075, "push": 0.0001, "in_app": 0.0, "webhook": 0.0}


def fields(problems):
    return [field for field, _ in problems]


# A stand-in for pipeline.templates with the contract's semantics on {{ name }} only.
def _variables(text):
    import re
    return set(re.findall(r"{{\s*([a-z_]+)", text))


CHECKS = SimpleNamespace(
    unresolved_variables=lambda parts, provided: sorted(
        {v for t in parts.values() for v in _variables(t)} - set(provided) - {"first_name"}),
    template_syntax_problems=lambda parts: [(k, "unclosed tag") for k, v in parts.items() if v.count("{{") != v.count("}}")],
)


def test_channels_must_be_known_unique_and_present():
    assert channel_problems(["email", "push"]) == []
    assert fields(channel_problems([])) == ["channels"]
    assert fields(channel_problems(["email", "fax", "email"])) == ["channels.1", "channels.2"]


def test_ab_weights_must_sum_to_100_with_unique_ids():
    ok = {"enabled": True, "variants": [{"id": "A", "weight": 50}, {"id": "B", "weight": 50}]}
    assert ab_test_problems(ok) == []
    assert ab_test_problems({"enabled": False, "variants": [{"id": "A", "weight": 3}]}) == []
    off = {"enabled": True, "variants": [{"id": "A", "weight": 60}, {"id": "B", "weight": 30}]}
    assert fields(ab_test_problems(off)) == ["ab_test.variants"]
    assert "sum to 90" in ab_test_problems(off)[0][1]
    dup = {"enabled": True, "variants": [{"id": "A", "weight": 50}, {"id": "A", "weight": 50}]}
    assert fields(ab_test_problems(dup)) == ["ab_test.variants.1.id"]


def test_ab_test_needs_two_positive_variants():
    one = {"enabled": True, "variants": [{"id": "A", "weight": 100}]}
    assert "ab_test.variants" in fields(ab_test_problems(one))
    negative = {"enabled": True, "variants": [{"id": "A", "weight": 110}, {"id": "B", "weight": -10}]}
    assert fields(ab_test_problems(negative)) == ["ab_test.variants.1.weight"]


def test_fractional_weights_that_sum_to_100_pass():
    thirds = {"enabled": True, "variants": [{"id": v, "weight": 100 / 3} for v in "ABC"]}
    assert ab_test_problems(thirds) == []


def test_window_needs_start_before_end_and_end_in_the_future():
    assert window_problems(NOW + timedelta(hours=1), NOW + timedelta(hours=2), NOW) == []
    assert fields(window_problems(NOW + timedelta(hours=2), NOW + timedelta(hours=1), NOW)) == ["end_time"]
    assert fields(window_problems(None, NOW - timedelta(hours=1), NOW)) == ["end_time"]


def test_schedule_needs_a_valid_cron_and_time_zone():
    assert schedule_problems({"cron": "0 9 * * MON", "timezone": "Europe/Paris"}) == []
    assert fields(schedule_problems({"cron": "every monday", "timezone": "Europe/Paris"})) == ["schedule.cron"]
    assert fields(schedule_problems({"cron": "0 9 * * *", "timezone": "Mars/Olympus"})) == ["schedule.timezone"]
    assert fields(schedule_problems({"cron": "0 0 9 * * *"})) == ["schedule.cron"]  # six fields


def test_next_run_is_evaluated_in_the_schedules_time_zone():
    # 09:00 in Paris in June is 07:00 UTC.
    assert next_run({"cron": "0 9 * * *", "timezone": "Europe/Paris"}, NOW) == datetime(
        2026, 6, 2, 7, 0, tzinfo=timezone.utc)


def test_each_type_asks_for_what_it_needs():
    assert type_problems("immediate", None, None, None, 1) == []
    assert fields(type_problems("scheduled", None, None, None, 1)) == ["start_time"]
    assert fields(type_problems("recurring", None, None, None, 1)) == ["schedule"]
    assert fields(type_problems("triggered", None, None, None, None)) == ["trigger"]
    assert fields(type_problems("triggered", None, None, {"event": "Bad Name"}, None)) == ["trigger.event"]
    assert type_problems("triggered", None, None, {"event": "cart_abandoned"}, None) == []
    assert fields(type_problems("immediate", None, None, {"event": "x"}, None)) == ["trigger", "target_segment_id"]
    assert fields(type_problems("weekly", None, None, None, 1)) == ["type"]


def test_an_event_trigger_is_a_rule_as_journeys_read_it():
    rule = {"event": "purchase", "topic": "user-events", "where": [{"field": "amount", "operator": "greater_than",
                                                                     "value": 50}],
            "reentry": "window", "reentry_window": "7_days", "dedup_key": "order_id", "limit": 1000}
    assert type_problems("triggered", None, None, rule, None) == []
    assert type_problems("triggered", None, None, {"event": "purchase", "reentry": "every"}, 7) == []


@pytest.mark.parametrize("trigger, field", [
    ({"event": "purchase", "where": [{"field": "amount", "operator": "bigger", "value": 5}]}, "trigger.where"),
    ({"event": "purchase", "where": [{"field": "events.purchase.count", "operator": "at_least", "value": 1}]},
     "trigger.where"),
    ({"event": "purchase", "reentry": "sometimes"}, "trigger.reentry"),
    ({"event": "purchase", "reentry": "window"}, "trigger.reentry_window"),
    ({"event": "purchase", "reentry_window": "7_days"}, "trigger.reentry_window"),
    ({"event": "purchase", "dedup_key": "order id"}, "trigger.dedup_key"),
    ({"event": "purchase", "limit": 0}, "trigger.limit"),
    ({"event": "purchase", "topic": "no spaces allowed"}, "trigger.topic"),
    ({"event": "purchase", "delay": "1h"}, "trigger.delay"),
    ({"where": [{"field": "amount", "operator": "greater_than", "value": 5}]}, "trigger.event"),
])
def test_a_bad_event_trigger_names_the_rules_field(trigger, field):
    problems = type_problems("triggered", None, None, trigger, None)
    assert problems and all(f.startswith(field) for f in fields(problems)), problems


def test_a_campaign_trigger_has_no_segment_of_its_own():
    problems = type_problems("triggered", None, None, {"event": "purchase", "segment_id": 7}, None)
    assert fields(problems) == ["trigger.segment_id"]
    assert "target_segment_id" in problems[0][1]


def test_a_date_trigger_names_a_profile_date_needs_a_segment_and_a_local_hour():
    birthday = {"date_field": "attributes.birthday"}
    assert type_problems("triggered", None, None, birthday, 1) == []
    assert fields(type_problems("triggered", None, None, birthday, None)) == ["target_segment_id"]
    assert fields(type_problems("triggered", None, None, {"date_field": "birthday"}, 1)) == ["trigger.date_field"]
    assert fields(type_problems("triggered", None, None, {**birthday, "event": "signup"}, 1)) == ["trigger"]
    assert type_problems("triggered", None, None, {"date_field": "created_at"}, 1) == []
    assert fields(delivery_problems(None, "triggered", birthday)) == ["delivery.local_time"]
    assert delivery_problems({"local_time": "09:00"}, "triggered", birthday) == []
    assert fields(delivery_problems({"local_time": "09:00"}, "triggered", {"event": "signup"})) == ["delivery"]


def test_budget_needs_a_known_currency_and_positive_spend():
    assert budget_problems({"max_spend": 10, "currency": "USD"}, {"USD"}) == []
    assert budget_problems(None, {"USD"}) == []
    assert fields(budget_problems({"max_spend": 0, "currency": "XXX"}, {"USD"})) == ["budget.max_spend", "budget.currency"]


def test_every_channel_needs_content_and_content_needs_its_channel():
    problems = content_problems(["email", "sms"], {"email": {"subject": "Hi", "text": "Hello"},
                                                   "push": {"body": "x"}}, {}, CHECKS)
    assert fields(problems) == ["content.sms", "content.push"]


def test_inline_content_needs_its_required_parts():
    assert fields(content_problems(["email"], {"email": {"html": "<p>x</p>"}}, {}, CHECKS)) == ["content.email.subject"]
    assert fields(content_problems(["webhook"], {"webhook": {}}, {}, CHECKS)) == ["content.webhook.url",
                                                                             "content.webhook.payload"]
    assert fields(content_problems(["push"], {"push": {"body": "b"}}, {}, CHECKS)) == ["content.push.title"]


def test_missing_template_is_named_by_its_field():
    problems = content_problems(["email"], {"email": {"template_id": 7}}, {7: None}, CHECKS)
    assert problems == [("content.email.template_id", "no template 7")]


def test_template_of_another_channel_is_refused():
    problems = content_problems(["email"], {"email": {"template_id": 7}}, {7: {"channel": "sms", "parts": {}}}, CHECKS)
    assert fields(problems) == ["content.email.template_id"] and "sms" in problems[0][1]


def test_unresolved_template_variables_are_named():
    template = {"channel": "email", "parts": {"subject": "{{ discount_code }} for {{ first_name }}", "text": "x"}}
    content = {"email": {"template_id": 7, "variables": {}}}
    problems = content_problems(["email"], content, {7: template}, CHECKS)
    assert problems == [("content.email.variables", "no value for template variable(s): discount_code")]
    content["email"]["variables"] = {"discount_code": "SUMMER50"}
    assert content_problems(["email"], content, {7: template}, CHECKS) == []


def test_inline_syntax_errors_are_named_by_part():
    problems = content_problems(["push"], {"push": {"title": "Hi {{ first_name", "body": "ok"}}, {}, CHECKS)
    assert problems == [("content.push.title", "unclosed tag")]


def test_unknown_content_fields_are_refused():
    problems = content_problems(["sms"], {"sms": {"body": "hi", "subject": "no"}}, {}, CHECKS)
    assert fields(problems) == ["content.sms.subject"]


def test_template_ids_lists_each_named_template_once():
    assert template_ids({"email": {"template_id": 3}, "push": {"template_id": 3}, "sms": {"body": "x"}}) == [3]


def test_estimated_cost_sums_unit_costs_of_every_channel():
    assert estimated_cost(150_000, ["email", "push"], COSTS) == Decimal("165.0000")
    assert estimated_cost(1, ["sms"], COSTS) == Decimal("0.0075")
    assert estimated_cost(0, ["email"], COSTS) == Decimal("0")
    assert estimated_cost(None, ["email"], COSTS) is None


def test_template_parts_cover_translations_and_variants():
    from pipeline.campaigns import template_parts

    template = {"channel": "email", "parts": {"subject": "a", "html": "b"},
                "translations": {"fr": {"subject": "c"}},
                "variants": {"B": {"subject": "d", "translations": {"fr": {"subject": "e"}}}}}
    assert template_parts(template) == {"subject": "a", "html": "b", "translations.fr.subject": "c",
                                        "variants.B.subject": "d", "variants.B.translations.fr.subject": "e"}


def test_a_variable_used_only_in_a_variant_must_be_provided_too():
    template = {"channel": "sms", "parts": {"body": "Hi"}, "variants": {"B": {"body": "Use {{ code }}"}}}
    problems = content_problems(["sms"], {"sms": {"template_id": 1}}, {1: template}, CHECKS)
    assert problems == [("content.sms.variables", "no value for template variable(s): code")]


def test_webhook_payload_may_be_an_object_of_templates_or_json_text():
    as_object = {"webhook": {"url": "https://example.com/hook", "payload": {"text": "hi {{ first_name }}", "n": 1}}}
    as_text = {"webhook": {"url": "https://example.com/hook", "payload": '{"text": "{{ first_name }}"}'}}
    assert content_problems(["webhook"], as_object, {}, CHECKS) == []
    assert content_problems(["webhook"], as_text, {}, CHECKS) == []
    assert fields(content_problems(["webhook"], {"webhook": {"url": "ftp://x", "payload": "{}"}}, {}, CHECKS)) == [
        "content.webhook.url"]
    assert content_problems(["sms"], {"sms": {"body": {"nested": 1}}}, {}, CHECKS) == [
        ("content.sms.body", "must be a string")]


def test_the_real_template_engine_accepts_defaults_and_refuses_unknown_variables():
    from pipeline import templates

    ok = {"email": {"subject": "{{ code | default('WELCOME') }} for {{ first_name }}", "text": "{{ unsubscribe_url }}"}}
    assert content_problems(["email"], ok, {}, templates) == []
    bad = {"email": {"subject": "{{ code }}", "text": "{% if %}"}}
    assert fields(content_problems(["email"], bad, {}, templates)) == ["content.email.text"]
    unresolved = {"email": {"subject": "{{ code }}", "text": "x"}}
    assert content_problems(["email"], unresolved, {}, templates) == [
        ("content.email.variables", "no value for template variable(s): code")]


def test_remembered_template_checks_answer_as_the_template_engine_does():
    from api.campaigns import TEMPLATE_CHECKS
    from pipeline import templates

    parts = {"subject": "{{ code }} {{ first_name }} {{ x | default('y') }}", "html": "{% if a %}{{ a }}{% endif %}",
             "text": "{{ broken", "body": "{{ other }}"}
    for provided in ({}, {"code": 1}, {"code": 1, "other": 2}):
        assert TEMPLATE_CHECKS.unresolved_variables(parts, provided) == templates.unresolved_variables(parts, provided)
    assert TEMPLATE_CHECKS.template_syntax_problems(parts) == templates.template_syntax_problems(parts)


def test_first_run_is_the_start_or_the_next_cron_time():
    from pipeline.campaigns import first_run

    later = NOW + timedelta(days=3)
    daily = {"cron": "0 9 * * *", "timezone": "UTC"}
    assert first_run("scheduled", later, None, NOW) == later
    assert first_run("immediate", None, None, NOW) == NOW
    assert first_run("recurring", None, daily, NOW) == NOW + timedelta(days=1)  # 09:00 exactly is not after 09:00
    assert first_run("recurring", later, daily, NOW) == later + timedelta(days=1)


# ---------------------------------------------------------------- delivery at each recipient's local hour


def test_local_hour_delivery_is_accepted_on_audience_campaigns():
    for ctype in ("immediate", "scheduled", "recurring"):
        assert delivery_problems({"local_time": "09:00"}, ctype) == []
    assert delivery_problems({"local_time": "23:59", "if_passed": "skip", "timezone": "Asia/Kolkata"},
                                   "immediate") == []
    assert delivery_problems(None, "triggered") == []


@pytest.mark.parametrize("local_time", ["9:00", "24:00", "09:60", "09:00:00", "0900", "", 900, None])
def test_local_time_must_be_hh_mm_24h(local_time):
    assert fields(delivery_problems({"local_time": local_time}, "immediate")) == ["delivery.local_time"]


def test_if_passed_is_next_day_or_skip():
    problems = delivery_problems({"local_time": "09:00", "if_passed": "send_now"}, "immediate")
    assert problems == [("delivery.if_passed", "unknown value 'send_now'; known: next_day, skip")]


def test_delivery_time_zone_must_be_iana():
    problems = delivery_problems({"local_time": "09:00", "timezone": "Mars/Olympus"}, "immediate")
    assert fields(problems) == ["delivery.timezone"]


def test_triggered_campaigns_have_no_local_hour():
    assert fields(delivery_problems({"local_time": "09:00"}, "triggered")) == ["delivery"]

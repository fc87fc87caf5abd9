"""Channel limits: SMS encodings and segments, push and in-app lengths, email subjects, and save-time checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.content.limits import GSM7_BASIC, GSM7_EXTENSION, check_limits, sms_count, sms_encoding
from pipeline.content.validate import content_problems, estimated_limits, normalize_parts
from pipeline.templates import TemplateContent


def test_gsm7_single_segment_up_to_160_septets_then_153_per_segment():
    assert (sms_count("a" * 160).segments, sms_count("a" * 161).segments) == (1, 2)
    assert (sms_count("a" * 306).segments, sms_count("a" * 307).segments) == (2, 3)
    assert sms_count("a" * 160).encoding == "GSM-7"


def test_extension_characters_count_double():
    count = sms_count("€" * 80)
    assert (count.encoding, count.characters, count.units, count.segments) == ("GSM-7", 80, 160, 1)
    assert sms_count("{" * 81).segments == 2
    assert sms_count("a" + "^" * 80).units == 161


def test_an_extension_pair_is_not_split_across_segments():
    # 152 septets, then a 2-septet euro: it cannot take the last septet of segment 1.
    count = sms_count("a" * 152 + "€" + "a" * 10)
    assert count.units == 164 and count.segments == 2 and count.remaining == 153 - 12


def test_one_non_gsm_character_makes_the_whole_message_ucs2():
    assert sms_encoding("Hello Zoé") == "GSM-7"  # é is in the GSM-7 basic table
    assert sms_encoding("Привет") == "UCS-2" and sms_encoding("ok ✓") == "UCS-2"
    assert (sms_count("ж" * 70).segments, sms_count("ж" * 71).segments) == (1, 2)
    assert (sms_count("ж" * 134).segments, sms_count("ж" * 135).segments) == (2, 3)


def test_emoji_cost_two_ucs2_units_and_are_not_split():
    count = sms_count("😀" * 35)
    assert (count.encoding, count.characters, count.units, count.segments) == ("UCS-2", 35, 70, 1)
    split = sms_count("a" * 66 + "😀" + "a" * 10)  # 66 units, then a pair that would straddle 67
    assert split.units == 78 and split.segments == 2 and split.remaining == 67 - 12


def test_more_than_ten_segments_is_a_problem_and_counts_are_reported():
    ok = check_limits("sms", {"body": "a" * 1530})
    assert ok.counts["sms"]["segments"] == 10 and not ok.problems
    too_long = check_limits("sms", {"body": "a" * 1531})
    assert too_long.problems == [("body", "needs 11 GSM-7 segments, more than 10")]
    assert check_limits("sms", {"body": "ж" * 671}).problems[0][1].startswith("needs 11 UCS-2 segments")


@given(st.text(alphabet=st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION) + ["ж", "😀"]), max_size=800))
def test_segments_hold_every_unit_and_none_is_over_capacity(text):
    count = sms_count(text)
    capacity = 160 if count.encoding == "GSM-7" else 70
    if count.units <= capacity:
        assert count.segments == (1 if text else 0)
    else:
        per = 153 if count.encoding == "GSM-7" else 67
        assert (count.segments - 1) * per < count.units <= count.segments * per
        assert count.segments <= -(-count.units // (per - 1))  # at most one unit lost per boundary


def test_push_lengths_urls_and_payload_size():
    report = check_limits("push", {"title": "t" * 66, "body": "b" * 241, "action_url": "not a url",
                                   "image_url": "http://img.example/x.png"})
    assert {part for part, _ in report.problems} == {"title", "body", "action_url", "image_url"}
    fine = check_limits("push", {"title": "t" * 65, "body": "b" * 240, "action_url": "app://sale"})
    assert not fine.problems and fine.counts["title_length"] == 65 and fine.counts["payload_bytes"] < 4096


def test_email_subject_limit_and_warning():
    assert check_limits("email", {"subject": "s" * 256}).problems[0][0] == "subject"
    warned = check_limits("email", {"subject": "s" * 90})
    assert not warned.problems and warned.warnings[0][0] == "subject"


def test_saving_checks_limits_with_a_sample_profile_per_version():
    content = TemplateContent("sms", {"body": "Hi {{ first_name }} " + "a" * 100},
                              translations={"ru": {"body": "Привет {{ first_name }} " + "ж" * 700}})
    [(field, reason)] = content_problems(content)
    assert field == "translations.ru.body" and "UCS-2 segments" in reason


def test_saving_reports_unknown_and_missing_parts_and_bad_languages():
    problems = dict(content_problems(TemplateContent("push", {"title": "x", "subtitle": "y"}, "english",
                                                     {"fr": {"title": "z"}},
                                                     {"B": {"title": "b", "translations": {"de": {"title": "c"}}}})))
    assert "not a part of push templates" in problems["parts.subtitle"]
    assert problems["default_language"].startswith("a language code")
    assert "no de translation" in problems["variants.B.translations.de"]
    assert content_problems(TemplateContent("push", {"title": "x"})) == [("parts.body", "required")]


def test_syntax_problems_name_the_version_they_are_in():
    content = TemplateContent("email", {"subject": "ok", "html": "<p>ok</p>"}, variants={"B": {"subject": "{{ x }"}})
    assert content_problems(content) == [("variants.B.subject", "unexpected '}' at line 1")]


def test_webhook_payload_objects_are_stored_as_json_text():
    parts = normalize_parts("webhook", {"payload": {"user": "{{ user_id }}", "n": 1}})
    assert parts == {"payload": '{"user":"{{ user_id }}","n":1}'}
    assert content_problems(TemplateContent("webhook", parts)) == []
    assert estimated_limits(TemplateContent("webhook", parts))["payload_bytes"] > 0

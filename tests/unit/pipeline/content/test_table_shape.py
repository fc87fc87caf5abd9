"""The spec's table shape (subject, body) mapped onto each channel's parts."""

from __future__ import annotations

import pytest

from pipeline.content.model import PART_KINDS, TABLE_FIELDS, CompiledTemplate, TemplateContent, message_variables
from pipeline.content.validate import content_problems, table_shape_parts
from pipeline.templates import SAMPLE_PROFILE


@pytest.mark.parametrize("channel, given, parts", [
    ("email", {"subject": "50% Off Summer Sale!", "body": "<p>Hi</p>"}, {"subject": "50% Off Summer Sale!",
                                                                          "html": "<p>Hi</p>"}),
    ("sms", {"body": "Sale today"}, {"body": "Sale today"}),
    ("push", {"subject": "Summer Sale", "body": "Get 50% off now!"}, {"title": "Summer Sale",
                                                                       "body": "Get 50% off now!"}),
    ("in_app", {"subject": "Hello", "body": "Welcome"}, {"title": "Hello", "body": "Welcome"}),
    ("webhook", {"body": {"event": "sale"}}, {"payload": {"event": "sale"}}),
])
def test_subject_and_body_become_the_channels_parts(channel, given, parts):
    assert table_shape_parts(channel, given) == (parts, [])


def test_every_table_field_maps_onto_a_part_the_channel_has():
    for channel, mapping in TABLE_FIELDS.items():
        assert set(mapping.values()) <= set(PART_KINDS[channel]), channel
        assert "body" in mapping


def test_a_field_the_channel_does_not_have_is_named():
    parts, problems = table_shape_parts("sms", {"subject": "Hi", "body": "Sale"})
    assert parts == {"body": "Sale"}
    assert problems == [("subject", "sms templates have no subject; in this shape they have body")]


def test_both_shapes_at_once_name_each_table_field():
    _, problems = table_shape_parts("email", {"subject": "Hi", "body": "<p>x</p>"}, parts_given=True)
    assert [field for field, _ in problems] == ["subject", "body"]
    assert "not both" in problems[0][1]


def test_an_email_given_as_subject_and_body_is_complete_and_renders_a_text_version():
    given = {"subject": "Hi {{ first_name }}", "body": "<p>Hello <b>{{ first_name }}</b></p>"}
    parts, _ = table_shape_parts("email", given)
    content = TemplateContent(channel="email", parts=parts)
    assert content_problems(content) == []
    rendered = CompiledTemplate(content).render(message_variables(SAMPLE_PROFILE, system={}))
    assert rendered.parts["html"] == "<p>Hello <b>Alex</b></p>"
    assert rendered.parts["text"] == "Hello Alex"

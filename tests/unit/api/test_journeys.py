"""api.journeys' own check: the description, the one top-level field the journey model does not read."""

from __future__ import annotations

from api.journeys import description_problems


def test_a_description_is_text_or_null():
    assert description_problems({"description": "Welcome series"}) == []
    assert description_problems({"description": None}) == []
    assert description_problems({}) == []
    assert description_problems([1]) == []  # not an object: the model names it
    assert [f for f, _ in description_problems({"description": 7})] == ["description"]
    assert [f for f, _ in description_problems({"description": "x" * 10_001})] == ["description"]

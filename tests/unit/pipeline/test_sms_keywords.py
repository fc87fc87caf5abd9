"""Inbound SMS keywords (pipeline/sms_keywords.py): whole message, trimmed, any case; OptOutType wins."""

from __future__ import annotations

import pytest

from pipeline.sms_keywords import HELP, OPT_IN, OPT_OUT, keyword_action

OPT_OUT_WORDS = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"]
OPT_IN_WORDS = ["START", "UNSTOP", "YES"]


def spellings(word: str) -> list[str]:
    """The word as people type it: upper, lower, capitalised, mixed, padded with spaces, tabs, a newline."""
    mixed = "".join(c.lower() if i % 2 else c for i, c in enumerate(word))
    return [word, word.lower(), word.capitalize(), mixed, f"  {word}  ", f"\t{word.lower()}\n", f" {mixed}"]


def test_the_lists_are_the_standard_ones():
    assert OPT_OUT == set(OPT_OUT_WORDS) and OPT_IN == set(OPT_IN_WORDS) and HELP == {"HELP"}


@pytest.mark.parametrize("word", OPT_OUT_WORDS)
def test_each_opt_out_keyword_opts_out_in_every_case_and_padding(word):
    for body in spellings(word):
        assert keyword_action(body) == "opt_out", repr(body)


@pytest.mark.parametrize("word", OPT_IN_WORDS)
def test_each_opt_in_keyword_opts_back_in_in_every_case_and_padding(word):
    for body in spellings(word):
        assert keyword_action(body) == "opt_in", repr(body)


def test_help_in_every_case_and_padding_asks_for_help():
    for body in spellings("HELP"):
        assert keyword_action(body) == "help", repr(body)


@pytest.mark.parametrize("body", [
    "please stop texting me", "STOP it", "stop.", "don't stop", "Stop!", "yes please", "help me", "START NOW",
    "unsubscribe me", "S T O P", "STOPP", "", "   ", None,
])
def test_a_keyword_inside_a_longer_message_or_altered_does_nothing(body):
    assert keyword_action(body) is None


@pytest.mark.parametrize("opt_out_type,body,expected", [
    ("STOP", "please no more", "opt_out"),  # a custom opt-out keyword Twilio recognised
    ("START", "STOP", "opt_in"),  # Twilio decided: it wins over our reading of the body
    ("HELP", "what is this", "help"),
    ("stop", "hello", "opt_out"),
    (" START ", "", "opt_in"),
])
def test_twilio_opt_out_type_wins_when_present(opt_out_type, body, expected):
    assert keyword_action(body, opt_out_type) == expected


@pytest.mark.parametrize("opt_out_type", [None, "", "SOMETHING_NEW"])
def test_an_absent_or_unknown_opt_out_type_leaves_the_body_to_decide(opt_out_type):
    assert keyword_action(" stop ", opt_out_type) == "opt_out"
    assert keyword_action("thanks!", opt_out_type) is None

"""The campaign state machine: every legal move, every illegal one, and where a launch goes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.campaigns import (
    STATUSES,
    IllegalTransition,
    allowed_transitions,
    control_action,
    launch_status,
    transition,
)

LEGAL = {
    ("draft", "scheduled"), ("draft", "active"), ("draft", "cancelled"),
    ("scheduled", "active"), ("scheduled", "cancelled"),
    ("active", "paused"), ("active", "completed"), ("active", "cancelled"),
    ("paused", "active"), ("paused", "completed"), ("paused", "cancelled"),
    # recurring and scheduled campaigns (issue 13): paused between runs, back to scheduled after a
    # run or a resume, completed when the last occurrence passed
    ("scheduled", "paused"), ("scheduled", "completed"), ("active", "scheduled"), ("paused", "scheduled"),
}
NOW = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("current,target", sorted(LEGAL))
def test_legal_transition_returns_the_target(current, target):
    assert transition(current, target) == target


@pytest.mark.parametrize(
    "current,target",
    sorted((c, t) for c in STATUSES for t in STATUSES if (c, t) not in LEGAL),
)
def test_illegal_transition_names_what_is_allowed(current, target):
    with pytest.raises(IllegalTransition) as raised:
        transition(current, target)
    error = raised.value
    assert (error.current, error.target) == (current, target)
    assert set(error.allowed) == {t for c, t in LEGAL if c == current}
    assert all(status in str(error) for status in error.allowed)


@pytest.mark.parametrize("final", ["completed", "cancelled"])
def test_final_statuses_allow_nothing_and_say_so(final):
    assert allowed_transitions(final) == ()
    with pytest.raises(IllegalTransition, match="final"):
        transition(final, "active")


def test_every_non_final_status_can_be_cancelled():
    assert [s for s in STATUSES if "cancelled" in allowed_transitions(s)] == ["draft", "scheduled", "active", "paused"]


def test_unknown_status_is_a_value_error():
    with pytest.raises(ValueError):
        transition("archived", "active")


def test_immediate_launch_goes_active():
    assert launch_status("immediate", None, NOW) == "active"


def test_launch_with_a_future_start_is_scheduled():
    assert launch_status("scheduled", NOW + timedelta(minutes=1), NOW) == "scheduled"
    assert launch_status("immediate", NOW + timedelta(minutes=1), NOW) == "scheduled"


def test_launch_of_a_scheduled_campaign_whose_start_has_passed_goes_active():
    assert launch_status("scheduled", NOW - timedelta(seconds=1), NOW) == "active"


def test_recurring_launch_always_waits_for_its_cron():
    assert launch_status("recurring", None, NOW) == "scheduled"


def test_control_actions_name_pause_resume_cancel_complete():
    assert control_action("active", "paused") == "pause"
    assert control_action("paused", "active") == "resume"
    assert control_action("paused", "cancelled") == "cancel"
    assert control_action("active", "completed") == "complete"
    assert control_action("draft", "active") is None  # a launch, not a control

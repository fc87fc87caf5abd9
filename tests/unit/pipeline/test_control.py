"""What a paused or cancelled campaign does to a batch, the same for every stage; what control records set."""

from __future__ import annotations

from pipeline import control
from schemas.messages import message_id

BATCH = {"campaign_id": 5, "channel": None, "partition": 1, "step": "send",
         "recipients": [{"user_id": 1, "variant": "A"}, {"user_id": 2}]}


def test_control_actions_set_the_running_status():
    assert [control.status_after(a) for a in ("pause", "resume", "cancel", "complete")] == [
        "paused", "active", "cancelled", "completed"]


def test_only_a_paused_or_cancelled_campaign_halts_its_batches_and_only_a_paused_one_keeps_them():
    assert [s for s in ("active", "paused", "cancelled", "completed", None) if control.halts(s)] == [
        "paused", "cancelled"]
    assert control.held("paused") and not control.held("cancelled")


def test_a_paused_batch_gives_each_message_a_held_event_without_reason():
    events = control.halted_events(5, "send", control.batch_recipients(BATCH), ["email", "sms"], "paused", at="t")
    assert sorted((e["user_id"], e["channel"]) for e in events) == [(1, "email"), (1, "sms"), (2, "email"), (2, "sms")]
    assert {(e["status"], e["reason"], e["at"]) for e in events} == {("held", None, "t")}
    assert events[0]["message_id"] == str(message_id(5, 1, "email"))
    assert events[0]["variant"] == "A"


def test_a_cancelled_batch_gives_each_message_a_cancelled_event():
    events = control.halted_events(5, "send", [(1, None)], ["push"], "cancelled")
    assert [(e["status"], e["reason"]) for e in events] == [("cancelled", "cancelled")]


def test_a_batch_with_a_channel_is_for_that_channel_only():
    assert control.batch_channels(BATCH | {"channel": "sms"}, ["email", "push"]) == ["sms"]
    assert control.batch_channels(BATCH, ["email", "push"]) == ["email", "push"]


def test_a_held_source_names_the_record_and_the_piece_held():
    assert control.held_source("outbox.email", 3, 120) == "outbox.email:3:120"
    assert control.held_source("outbox.email", 3, 120, "rest") == "outbox.email:3:120:rest"

"""Journey definitions the tests share (plain data, no imports: unit tests read it too)."""


def spec_workflow(entry: str = "signup", goal: str = "purchase", name: str = "Onboarding") -> dict:
    """The spec's MultiChannelOrchestrator: send an email, wait a day, if not opened send a push, wait two
    days, if still not converted (the goal event) send an SMS; the goal ends the journey at once."""
    return {
        "name": name,
        "goal": {"event": goal},
        "nodes": [
            {"id": "start", "type": "entry", "event": entry, "next": "email"},
            {"id": "email", "type": "send", "channel": "email", "template_id": 1, "next": "wait1"},
            {"id": "wait1", "type": "wait", "duration": "1_day", "next": "opened"},
            {"id": "opened", "type": "condition", "if": {"opened": "email"}, "then": "wait2", "else": "push"},
            {"id": "push", "type": "send", "channel": "push", "template_id": 2, "next": "wait2"},
            {"id": "wait2", "type": "wait", "duration": "2_days", "next": "converted"},
            {"id": "converted", "type": "condition", "if": {"converted": True}, "then": "done", "else": "sms"},
            {"id": "sms", "type": "send", "channel": "sms", "template_id": 3, "next": "done"},
            {"id": "done", "type": "exit"},
        ],
    }

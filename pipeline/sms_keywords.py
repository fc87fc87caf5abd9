"""What an inbound SMS asks for: opt out, opt back in, help, or nothing (``keyword_action``).

The keyword lists are the carriers' and Twilio's standard ones (Twilio's Advanced Opt-Out
defaults, CTIA's guidelines). A keyword counts only as the whole message, trimmed and in any
case: "STOP", " stop ", "Stop" opt out; "please stop texting me" does not (a person writing a
sentence is talking to someone, and Twilio matches whole messages the same way).

When Twilio's Advanced Opt-Out is on, it tells us what it decided in ``OptOutType``
("STOP", "START", "HELP"), also for the custom keywords configured in its console: that
decision wins over our own reading of the body, so Herald and Twilio never disagree about
whether a number is opted out.
"""

from __future__ import annotations

from typing import Literal

Action = Literal["opt_out", "opt_in", "help"]

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "UNSTOP", "YES"})
HELP = frozenset({"HELP"})

_OPT_OUT_TYPES: dict[str, Action] = {"STOP": "opt_out", "START": "opt_in", "HELP": "help"}


def keyword_action(body: str | None, opt_out_type: str | None = None) -> Action | None:
    """The action an inbound message asks for, or None (an ordinary reply, which changes nothing)."""
    if opt_out_type:
        decided = _OPT_OUT_TYPES.get(opt_out_type.strip().upper())
        if decided is not None:
            return decided
    word = (body or "").strip().upper()
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return None

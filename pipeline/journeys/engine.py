"""One user through one flow: entries, timers, events and engagement in, sends and moves out. Pure.

A flow is a published journey version, or a triggered campaign (entry → send → exit). A user's place
in it (a "member") is a compact list, as the journey table stores it per user and flow:

    [version, k, node, entered_at, since, wake_at, marks, last_entry_at, seen]

    version     the flow version the user entered with (they finish on it, whatever is published later)
    k           how many times the user has entered
    entered_at  when the entering event happened; each entry's messages have their own ids (step
                "<node>@<entered second>": a re-entry is a new message, a replay the same message)
    node        where the user is, None once they left (the rest is kept for the re-entry policy)
    since       when the user reached ``node`` (a wait counts from it)
    wake_at     when the timer of a wait (or a wait-for-event's timeout) is due, None if not waiting
    marks       what happened since entry: {"o": [sends opened], "c": [clicked], "e": [events], "g": 1}
    seen        dedup values and event ids of recent entries (a retried event does not enter twice)

The I/O layer (pipeline/journeys_io.py, agents/advance_journeys.py) loads the flow, the member and
whatever facts a node needs (``Facts``: a profile, segment memberships); a function that needs a
fact it was not given raises ``NeedFacts``, and is called again once it is fetched. Nothing here
mutates its arguments, so calling again is safe.

Times are epoch seconds. A move caused by a timer happens AT the timer's time, not when the worker
got to it: a worker that was down continues each user on the schedule the definition implies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.journeys.model import (
    Branch, Entry, Journey, Node, Rule, Send, Split, Wait, WaitForEvent, DEFAULT_TOPIC,
)
from pipeline.journeys.rules import Event, condition_holds, criteria_hold, matches, moment_of

V, K, NODE, ENTERED, SINCE, WAKE, MARKS, LAST, SEEN = range(9)
SEEN_KEPT = 8  # dedup values and event ids remembered per user and flow
LATE_ENTRY_S = 3600  # an entering event older than this enters the user now (a backfill, a long outage)
MAX_STEPS = 500  # nodes one call may pass (a validated journey parks or exits long before)
UNKNOWN = object()


@dataclass(frozen=True)
class Flow:
    key: str  # "j<journey id>" or "c<campaign id>"
    version: int
    journey: Journey
    campaigns: Mapping[str, int]  # send node → the campaign carrying its messages
    live: bool = True  # new users may enter
    whole_campaign: bool = False  # a triggered campaign: its send goes out on every channel of the campaign

    @property
    def rule(self) -> Rule:
        return self.journey.entry_rule


def campaign_flow(campaign_id: int, version: int, rule: Rule, live: bool = True) -> Flow:
    """A triggered campaign as a flow: its rule's entry, one send of the campaign, exit."""
    nodes: dict[str, Node] = {
        "entry": Entry("entry", "entry", "send", rule=rule),
        "send": Send("send", "send", "exit"),
        "exit": Node("exit", "exit"),
    }
    return Flow(f"c{campaign_id}", version, Journey(f"campaign {campaign_id}", nodes, "entry"), {"send": campaign_id},
                live=live, whole_campaign=True)


@dataclass
class Facts:
    """What the I/O layer fetched about the user: ``profile`` {"timezone", "created_at", "attributes"}
    (None: no such user; UNKNOWN: not fetched) and segment memberships."""

    profile: object = UNKNOWN
    segments: Mapping[int, bool] = field(default_factory=dict)


class NeedFacts(Exception):
    def __init__(self, profile: bool = False, segment: int | None = None) -> None:
        super().__init__(f"needs {'the profile' if profile else f'segment {segment}'}")
        self.profile = profile
        self.segment = segment


@dataclass(frozen=True, slots=True)
class SendAction:
    node: str
    campaign_id: int
    step: str  # "<node>@<entry tag>"
    channel: str | None  # None: every channel of the campaign


@dataclass
class Outcome:
    member: list
    before: str | None  # the node the user was parked at before (None: outside)
    sends: list[SendAction] = field(default_factory=list)
    entered: bool = False
    exit: str | None = None  # why the user left now: goal, exit, stopped
    converted: bool = False

    @property
    def node(self) -> str | None:
        return self.member[NODE]

    @property
    def wake_at(self) -> float | None:
        return self.member[WAKE]


# ── Entering ──────────────────────────────────────────────────────────────────


def admit(flow: Flow, prev: list | None, seen: list[str], now: float, facts: Facts) -> str | None:
    """Why the user may not enter now (None: they may). ``seen``: the entry's dedup value and event id."""
    rule = flow.rule
    if not flow.live:
        return "not_live"
    if prev is not None:
        if prev[NODE] is not None:
            return "inside"
        if any(s in (prev[SEEN] or ()) for s in seen):
            return "duplicate"
        if rule.reentry == "once":
            return "entered_before"
        if rule.reentry == "window" and rule.window_s and now < prev[LAST] + rule.window_s:
            return "within_window"
    if rule.segment_id is not None:
        member = facts.segments.get(rule.segment_id)
        if member is None:
            raise NeedFacts(segment=rule.segment_id)
        if not member:
            return "not_in_segment"
    return None


def start(flow: Flow, prev: list | None, uid: int, seen: list[str], now: float, facts: Facts,
          at: float | None = None) -> Outcome:
    """Enter the user (``admit`` said yes, the entry limit too) and run them to their first stop.

    ``at``: when the entering event happened. The entry counts from it (a replay of the event enters at the
    same instant, so its messages are the same messages: ``entry_tag``), unless it is in the future or
    over ``LATE_ENTRY_S`` old (a backfilled event does not run a user through their waits at once)."""
    when = now if at is None or at > now or now - at > LATE_ENTRY_S else at
    if prev is not None and int(when) <= int(prev[ENTERED]):  # a re-entry within the second of the last one:
        when = float(int(prev[ENTERED]) + 1)                 # the next second, so its messages are new ones
    k = (prev[K] if prev is not None else 0) + 1
    kept = ([s for s in (prev[SEEN] or ()) if s not in seen] if prev is not None else []) + seen
    member = [flow.version, k, flow.journey.entry, when, when, None, None, when, kept[-SEEN_KEPT:]]
    out = Outcome(member, None, entered=True)
    _go(flow, member, flow.journey.nodes[flow.journey.entry].next, when)
    _run(flow, member, uid, now, facts, out)
    return out


def entry_tag(member: list) -> int:
    """The entry a member's messages belong to: the second it entered. A send's step is "<node>@<tag>", so a
    re-entry's messages are new messages and the users who entered in the same second share one step (their
    sends travel together in one message-requests record)."""
    return int(member[ENTERED])


def step_tag(step: str) -> int | None:
    """The entry tag of a journey step "<node>@<tag>" (None: not a journey step)."""
    _, sep, tag = step.rpartition("@")
    return int(tag) if sep and tag.isdigit() else None


# ── What moves a user ─────────────────────────────────────────────────────────


def on_wake(flow: Flow, member: list, uid: int, now: float, facts: Facts) -> Outcome | None:
    """A timer: the wait (or the wait-for-event's timeout) ends, if it is this member's and due."""
    if member[NODE] is None or member[WAKE] is None or member[WAKE] > now:
        return None
    m = _copy(member)
    out = Outcome(m, m[NODE])
    node, at = flow.journey.nodes[m[NODE]], m[WAKE]
    if isinstance(node, WaitForEvent):
        _go(flow, m, node.timeout_next, at)
    else:
        _go(flow, m, node.next, at)
    _run(flow, m, uid, now, facts, out)
    return out


def on_event(flow: Flow, member: list, uid: int, event: Event, now: float, facts: Facts) -> Outcome | None:
    """A user event: the goal (exit at once), an event a wait is for, or one a condition will read."""
    if member[NODE] is None or event.at < member[ENTERED]:
        return None
    journey = flow.journey
    m = _copy(member)
    out = Outcome(m, m[NODE])
    when = datetime.fromtimestamp(now, tz=timezone.utc)
    changed = False
    if journey.goal is not None and matches(journey.goal, event, when):
        out.converted = changed = not (m[MARKS] or {}).get("g")
        if journey.goal_exits:
            _leave(m, out, "goal")
            return out
        m[MARKS] = {**(m[MARKS] or {}), "g": 1}  # noted; the event may also be one a wait or a condition reads
    if event.name in _tested_events(journey):
        marks = m[MARKS] = dict(m[MARKS] or {})
        if event.name not in marks.get("e", ()):
            marks["e"] = [*marks.get("e", ()), event.name]
            changed = True
    node = journey.nodes[m[NODE]]
    if isinstance(node, WaitForEvent) and node.event == event.name and event.at >= m[SINCE] \
            and (m[WAKE] is None or event.at <= m[WAKE]) \
            and (node.where is None or criteria_hold(node.where, event.properties, when)):
        _go(flow, m, node.next, max(event.at, m[SINCE]))
        _run(flow, m, uid, now, facts, out)
        return out
    return out if changed else None


def on_engagement(flow: Flow, member: list, uid: int, node_id: str, kind: str, now: float,
                  facts: Facts, at: float | None = None) -> Outcome | None:
    """The user opened or clicked the message of send node ``node_id`` (this entry's) at ``at`` (default
    ``now``); an open that came after a wait-for-it's timeout was due leaves the timeout to decide."""
    if member[NODE] is None or kind not in ("opened", "clicked"):
        return None
    m = _copy(member)
    marks = m[MARKS] = dict(m[MARKS] or {})
    key = "o" if kind == "opened" else "c"
    kinds = [key] + (["o"] if key == "c" else [])  # a click implies the message was opened
    changed = False
    for mark in kinds:
        if node_id not in marks.get(mark, ()):
            marks[mark] = [*marks.get(mark, ()), node_id]
            changed = True
    out = Outcome(m, m[NODE])
    node = flow.journey.nodes[m[NODE]]
    when = now if at is None else min(at, now)
    if isinstance(node, WaitForEvent) and node.of == node_id and (node.event == kind or node.event == "opened") \
            and (m[WAKE] is None or when <= m[WAKE]):
        _go(flow, m, node.next, max(when, m[SINCE]))
        _run(flow, m, uid, now, facts, out)
        return out
    return out if changed else None


def leave(member: list, reason: str) -> Outcome | None:
    """Take the user out (the flow was stopped)."""
    if member[NODE] is None:
        return None
    m = _copy(member)
    out = Outcome(m, m[NODE])
    _leave(m, out, reason)
    return out


# ── Running nodes ─────────────────────────────────────────────────────────────


def _copy(member: list) -> list:
    m = list(member)
    if m[MARKS] is not None:
        m[MARKS] = dict(m[MARKS])
    return m


def _go(flow: Flow, m: list, target: str | None, at: float) -> None:
    m[NODE] = target if target is not None else "__exit__"
    m[SINCE] = at
    m[WAKE] = None


def _leave(m: list, out: Outcome, reason: str) -> None:
    m[NODE] = None
    m[WAKE] = None
    m[MARKS] = None
    out.exit = reason


def _run(flow: Flow, m: list, uid: int, now: float, facts: Facts, out: Outcome) -> None:
    """Pass nodes until the user parks at a wait or leaves."""
    journey = flow.journey
    for _ in range(MAX_STEPS):
        node = journey.nodes.get(m[NODE])
        if node is None or node.type == "exit":
            _leave(m, out, "exit")
            return
        if isinstance(node, Send):
            out.sends.append(SendAction(node.id, flow.campaigns[node.id], f"{node.id}@{entry_tag(m)}",
                                        None if flow.whole_campaign else node.channel))
            _go(flow, m, node.next, m[SINCE])
        elif isinstance(node, Wait):
            due = m[WAKE] if m[WAKE] is not None else _wait_end(node, m[SINCE], facts)
            if due is not None and due > now:
                m[WAKE] = due
                return
            _go(flow, m, node.next, max(due, m[SINCE]) if due is not None else m[SINCE])  # a past date: from arrival
        elif isinstance(node, WaitForEvent):
            marks = m[MARKS] or {}
            if node.of is not None and node.of in marks.get("o" if node.event == "opened" else "c", ()):
                _go(flow, m, node.next, m[SINCE])  # it was opened (clicked) before the user got here
                continue
            due = m[SINCE] + node.timeout_s
            if due > now:
                m[WAKE] = due
                return
            _go(flow, m, node.timeout_next, due)
        elif isinstance(node, Branch):
            _go(flow, m, node.next if _holds(flow, node, m, facts, now) else node.else_, m[SINCE])
        elif isinstance(node, Split):
            _go(flow, m, _pick(flow, node, uid, m[K]), m[SINCE])
        else:  # the entry (never reached again: validated)
            _go(flow, m, node.next, m[SINCE])
    _leave(m, out, "exit")


def _holds(flow: Flow, node: Branch, m: list, facts: Facts, now: float) -> bool:
    test, marks = node.test, m[MARKS] or {}
    if test.kind == "opened":
        return test.node in marks.get("o", ())
    if test.kind == "clicked":
        return test.node in marks.get("c", ())
    if test.kind == "converted":
        return bool(marks.get("g"))
    if test.kind == "event":
        return test.event in marks.get("e", ())
    if test.kind == "segment":
        member = facts.segments.get(test.segment_id)
        if member is None:
            raise NeedFacts(segment=test.segment_id)
        return member
    profile = _profile(facts)
    cond = test.condition
    assert cond is not None
    values = dict((profile or {}).get("attributes") or {})
    for builtin in ("country", "language", "timezone", "created_at", "email", "phone"):
        if profile and profile.get(builtin) is not None:
            values.setdefault(builtin, profile[builtin])
    return condition_holds(cond, values.get(cond.target.name), datetime.fromtimestamp(now, tz=timezone.utc))


def _profile(facts: Facts) -> Mapping | None:
    if facts.profile is UNKNOWN:
        raise NeedFacts(profile=True)
    return facts.profile  # type: ignore[return-value]


def _wait_end(node: Wait, since: float, facts: Facts) -> float | None:
    """When a wait that began at ``since`` ends; None: at once (a date the profile does not have)."""
    if node.seconds is not None:
        return since + node.seconds
    profile = _profile(facts)
    if node.until_time is not None:
        zone = _zone((profile or {}).get("timezone"))
        local = datetime.fromtimestamp(since, tz=zone)
        at = local.replace(hour=node.until_time.hour, minute=node.until_time.minute, second=0, microsecond=0)
        if at <= local:
            at = (local + timedelta(days=1)).replace(hour=node.until_time.hour, minute=node.until_time.minute,
                                                     second=0, microsecond=0)
        return at.timestamp()
    name = node.date_field or "created_at"
    raw = (profile or {}).get("created_at") if name == "created_at" else \
        ((profile or {}).get("attributes") or {}).get(name.removeprefix("attributes."))
    moment = moment_of(raw)
    return None if moment is None else moment.timestamp() + node.offset_s


def _zone(name: object) -> ZoneInfo:
    try:
        return ZoneInfo(name) if isinstance(name, str) and name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _pick(flow: Flow, node: Split, uid: int, k: int) -> str:
    digest = hashlib.blake2b(f"{flow.key}:{node.id}:{uid}:{k}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") % 100
    total = 0
    for percent, target in node.branches:
        total += percent
        if point < total:
            return target
    return node.branches[-1][1]


def _tested_events(journey: Journey) -> set[str]:
    """The user events a journey's conditions read ("since entry")."""
    return {n.test.event for n in journey.nodes.values()
            if isinstance(n, Branch) and n.test.kind == "event" and n.test.event}


def listens(flow: Flow, event: Event) -> bool:
    """Whether an event matters to members of the flow (a goal, a wait for it, a condition on it)."""
    return event.name in flow.journey.event_names()


__all__ = ["DEFAULT_TOPIC", "Facts", "Flow", "NeedFacts", "Outcome", "SendAction", "UNKNOWN", "admit",
           "campaign_flow", "leave", "on_engagement", "on_event", "on_wake", "start"]

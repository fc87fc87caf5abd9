"""Journeys and event rules as data: parse and validate once, at the API boundary. Pure, no I/O.

A journey is a flat list of typed nodes (as Dittofeed and the spec write them), each naming the
node(s) it leads to:

    entry           {"event": "signup", "where": {...}, ...rule}   or {"segment_id": 7} (entering it)
    send            {"channel": "email", "template_id": 12, "variants": [{"id", "weight"}], "next"}
    wait            {"duration": "1_day"} | {"until_time": "09:00"} (the user's zone)
                    | {"until_date": {"field": "attributes.renewal_at", "offset": "-3_days"}}
    wait_for_event  {"event": "opened", "of": "<send node>"} or {"event": "app_open", "where"},
                    "timeout": "1_day", "next" (it came), "timeout_next" (it did not)
    condition       {"if": {"opened"|"clicked": "<send node>"} | {"converted": true}
                           | {"attribute": {field, operator, value}} | {"segment": id} | {"event": name},
                     "then", "else"}
    split           {"branches": [{"percent": 90, "next"}, {"percent": 10, "next"}]}
    exit            {}

plus, for the whole journey, ``goal`` ({"event": "purchase", "where"}): reaching it exits the user at
once, whatever node they are at, and what was queued for them is not sent.

An event rule (a journey's entry, a triggered campaign's ``trigger``, a goal, a wait-for-event) names
a topic (default ``user-events``), an event name, property filters in the segment DSL (the same
operators, applied to the event's properties), and for entries: an audience segment the user must
also be in, a re-entry policy (once ever, once per window, every time), a dedup key (an event
property: a retried upstream event enters once) and an entry limit.

``parse_journey`` returns a ``Journey`` or raises ``DefinitionError`` listing every problem as
(path, reason), the reason naming the node: unknown types and channels, missing or mismatched
templates, dangling references, nodes the entry cannot reach, loops without a wait.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any, Literal

from pipeline.segments.dsl import BUILTINS, Condition, Criteria, CriteriaError, Group, parse_criteria
from schemas.messages import CHANNELS

Problem = tuple[str, str]
DEFAULT_TOPIC = "user-events"
MAX_NODES = 200
REENTRY = ("once", "every", "window")
NODE_TYPES = ("entry", "send", "wait", "wait_for_event", "condition", "split", "exit")
ENGAGEMENT = ("opened", "clicked")  # events of a journey's own messages (delivery events)

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_EVENT = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")  # as schemas.records.UserEvent
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_DURATION = re.compile(r"^(-?)([0-9]{1,6})_(second|minute|hour|day|week)s?$")
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400}
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class DefinitionError(ValueError):
    """Invalid journey or rule; ``problems`` lists (path, reason)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {r}" for p, r in problems))


# ── The parsed forms ──────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Rule:
    """An event rule. ``event`` None: a segment entry (the user entering ``segment_id``)."""

    event: str | None
    topic: str = DEFAULT_TOPIC
    where: Criteria | None = None
    segment_id: int | None = None
    reentry: str = "once"
    window_s: int | None = None
    dedup_key: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    next: str | None = None


@dataclass(frozen=True)
class Entry(Node):
    rule: Rule = field(default_factory=lambda: Rule(None))


@dataclass(frozen=True)
class Send(Node):
    channel: str = "email"
    template_id: int | None = None
    variants: tuple[tuple[str, float], ...] = ()
    variables: Mapping[str, Any] = field(default_factory=dict)
    category: str | None = None
    transactional: bool = False


@dataclass(frozen=True)
class Wait(Node):
    seconds: int | None = None
    until_time: time | None = None
    date_field: str | None = None  # until a date of the profile (attributes.<name> or created_at) ...
    offset_s: int = 0              # ... plus or minus this


@dataclass(frozen=True)
class WaitForEvent(Node):
    event: str = ""
    of: str | None = None  # the send node whose message is opened/clicked
    where: Criteria | None = None
    timeout_s: int = 0
    timeout_next: str | None = None


@dataclass(frozen=True)
class Test:
    kind: Literal["opened", "clicked", "converted", "attribute", "segment", "event"]
    node: str | None = None  # opened/clicked: the send node
    condition: Condition | None = None  # attribute
    segment_id: int | None = None
    event: str | None = None


@dataclass(frozen=True)
class Branch(Node):  # a condition
    test: Test = field(default_factory=lambda: Test("converted"))
    else_: str | None = None


@dataclass(frozen=True)
class Split(Node):
    branches: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Journey:
    name: str
    nodes: Mapping[str, Node]
    entry: str
    goal: Rule | None = None
    goal_exits: bool = True  # False: reaching the goal marks the user converted, and they carry on
    # The gate's quiet hours for every send of the journey, as a campaign's schedule.quiet_hours: true (the
    # configured window), {"start": "21:00", "end": "08:00"} (the user's local time), false, or None (the default).
    quiet_hours: object = None

    @property
    def entry_rule(self) -> Rule:
        node = self.nodes[self.entry]
        assert isinstance(node, Entry)
        return node.rule

    def sends(self) -> list[Send]:
        return [n for n in self.nodes.values() if isinstance(n, Send)]

    def event_names(self) -> set[str]:
        """Every user event the journey listens to: its entry, goal, waits for events and conditions."""
        names = {self.entry_rule.event} if self.entry_rule.event else set()
        if self.goal is not None and self.goal.event:
            names.add(self.goal.event)
        for node in self.nodes.values():
            if isinstance(node, WaitForEvent) and node.event not in ENGAGEMENT:
                names.add(node.event)
            elif isinstance(node, Branch) and node.test.kind == "event" and node.test.event:
                names.add(node.test.event)
        return names


def successors(node: Node) -> list[str]:
    out = [node.next] if node.next else []
    if isinstance(node, Branch) and node.else_:
        out.append(node.else_)
    if isinstance(node, WaitForEvent) and node.timeout_next:
        out.append(node.timeout_next)
    if isinstance(node, Split):
        out += [n for _, n in node.branches]
    return out


def waits(node: Node) -> bool:
    return isinstance(node, (Wait, WaitForEvent))


# ── Durations, times ──────────────────────────────────────────────────────────


def parse_seconds(raw: object, *, signed: bool = False) -> int | None:
    """"90_seconds", "1_day", "2_weeks" (and "-3_days" when ``signed``) → seconds; None if malformed."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if (signed or raw > 0) else None
    if not isinstance(raw, str):
        return None
    match = _DURATION.match(raw.strip())
    if not match or (match.group(1) and not signed):
        return None
    seconds = int(match.group(2)) * _UNITS[match.group(3)]
    if not signed and seconds <= 0:
        return None
    return -seconds if match.group(1) else seconds


# ── Parsing ───────────────────────────────────────────────────────────────────


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))


def _where(raw: object, path: str, out: _Problems) -> Criteria | None:
    """Property filters in the segment DSL: bare names are the event's properties."""
    if raw is None:
        return None
    if isinstance(raw, list):
        raw = {"conditions": raw, "logic": "AND"}
    try:
        criteria = parse_criteria(_as_properties(raw))
    except CriteriaError as exc:
        for p, reason in exc.problems:
            out.add(path + p.removeprefix("criteria"), reason)
        return None
    if criteria.exclude_segments:
        out.add(f"{path}.exclude_segments", "event filters read the event's properties; they exclude no segments")
    stack: list[Condition | Group] = [criteria.root]
    while stack:
        node = stack.pop()
        if isinstance(node, Group):
            stack.extend(node.conditions)
        elif node.target.source != "attribute":
            out.add(f"{path}", f"{node.field!r} is not an event property (write the property's name)")
    return criteria


def _as_properties(raw: object) -> object:
    """A bare built-in user field name ('country', 'created_at') in an event filter is the event's property."""
    if not isinstance(raw, Mapping):
        return raw
    out = dict(raw)
    if isinstance(out.get("conditions"), list):
        out["conditions"] = [_as_properties(c) for c in out["conditions"]]
    if isinstance(out.get("field"), str) and out["field"] in BUILTINS:
        out["field"] = f"attributes.{out['field']}"
    return out


def parse_rule(raw: object, path: str, *, entry: bool = True, problems: _Problems | None = None) -> Rule | None:
    """An event rule (see the module's docstring); ``entry`` False for goals and waits (no re-entry,
    dedup, limit or audience)."""
    out = problems or _Problems()
    if not isinstance(raw, Mapping):
        out.add(path, "an object such as {\"event\": \"purchase\"}")
        if problems is None:
            raise DefinitionError(out.items)
        return None
    allowed = {"event", "topic", "where"} | ({"segment_id", "reentry", "reentry_window", "dedup_key", "limit"}
                                             if entry else set())
    for key in raw:
        if key not in allowed:
            out.add(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
    event = raw.get("event")
    segment_id = raw.get("segment_id")
    if event is None and not (entry and segment_id is not None):
        out.add(f"{path}.event", "an event name such as 'purchase' is required")
    elif event is not None and (not isinstance(event, str) or not _EVENT.match(event)):
        out.add(f"{path}.event", "event names are lower-case words such as 'cart_abandoned'")
    topic = raw.get("topic", DEFAULT_TOPIC)
    if not isinstance(topic, str) or not _TOPIC.match(topic):
        out.add(f"{path}.topic", "a Kafka topic name")
    where = _where(raw.get("where"), f"{path}.where", out)
    if segment_id is not None and (isinstance(segment_id, bool) or not isinstance(segment_id, int) or segment_id < 1):
        out.add(f"{path}.segment_id", "a segment id")
    reentry = raw.get("reentry", "once")
    window_s = None
    if reentry not in REENTRY:
        out.add(f"{path}.reentry", "one of once (ever), every (time) or window (once per reentry_window)")
    elif reentry == "window":
        window_s = parse_seconds(raw.get("reentry_window"))
        if window_s is None:
            out.add(f"{path}.reentry_window", "a duration such as '7_days' (once per window)")
    elif "reentry_window" in raw:
        out.add(f"{path}.reentry_window", "only with reentry 'window'")
    dedup_key = raw.get("dedup_key")
    if dedup_key is not None and (not isinstance(dedup_key, str) or not _PROPERTY.match(dedup_key)):
        out.add(f"{path}.dedup_key", "the name of an event property, such as 'order_id'")
    if dedup_key is not None and event is None:
        out.add(f"{path}.dedup_key", "a segment entry has no event to take a dedup key from")
    limit = raw.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        out.add(f"{path}.limit", "a positive number of entries")
    if problems is None and out.items:
        raise DefinitionError(out.items)
    return Rule(event=event if isinstance(event, str) else None, topic=topic if isinstance(topic, str) else DEFAULT_TOPIC,
                where=where, segment_id=segment_id if isinstance(segment_id, int) else None,
                reentry=reentry if reentry in REENTRY else "once", window_s=window_s,
                dedup_key=dedup_key if isinstance(dedup_key, str) else None,
                limit=limit if isinstance(limit, int) and not isinstance(limit, bool) else None)


def parse_journey(raw: object, templates: Mapping[int, str] | None = None,
                  segments: Mapping[int, str] | None = None) -> Journey:
    """Validate a journey definition. ``templates`` (template id → its channel) and ``segments``
    (segment id → kind), when given, are checked against; None skips those checks (a stored
    definition read back)."""
    out = _Problems()
    if not isinstance(raw, Mapping):
        raise DefinitionError([("definition", "an object with name and nodes")])
    for key in raw:
        if key not in ("name", "description", "goal", "nodes", "quiet_hours"):
            out.add(key, "unknown field; allowed: name, description, goal, nodes, quiet_hours")
    quiet = raw.get("quiet_hours")
    if quiet is not None and not isinstance(quiet, bool):
        bounds = [quiet.get(k) for k in ("start", "end")] if isinstance(quiet, Mapping) else None
        if bounds is None or set(quiet) - {"start", "end"} or not all(isinstance(b, str) and _CLOCK.match(b)
                                                                       for b in bounds):
            out.add("quiet_hours", "true (the configured window), false, or {\"start\": \"21:00\", \"end\": \"08:00\"}"
                    " in the user's local time")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        out.add("name", "a name of 1 to 255 characters")
    goal, goal_exits = None, True
    if raw.get("goal") is not None:
        spec = raw["goal"]
        if isinstance(spec, Mapping) and "exit" in spec:
            goal_exits = spec["exit"]
            if not isinstance(goal_exits, bool):
                out.add("goal.exit", "true (reaching the goal ends the journey, the default) or false (it is noted)")
            spec = {k: v for k, v in spec.items() if k != "exit"}
        goal = parse_rule(spec, "goal", entry=False, problems=out)
    items = raw.get("nodes")
    if not isinstance(items, list) or not items:
        out.add("nodes", "a list of nodes, one of them the entry")
        raise DefinitionError(out.items)
    if len(items) > MAX_NODES:
        out.add("nodes", f"at most {MAX_NODES} nodes")
    nodes: dict[str, Node] = {}
    paths: dict[str, str] = {}
    for i, item in enumerate(items):
        path = f"nodes.{i}"
        if not isinstance(item, Mapping):
            out.add(path, "a node object with id and type")
            continue
        node_id = item.get("id")
        if not isinstance(node_id, str) or not _ID.match(node_id):
            out.add(f"{path}.id", "a node id of letters, digits, '_', '-' or '.' (at most 64)")
            continue
        if node_id in nodes:
            out.add(f"{path}.id", f"node {node_id!r} is defined twice")
            continue
        node = _node(item, node_id, path, out, templates, segments)
        if node is not None:
            nodes[node_id] = node
            paths[node_id] = path
    entries = [n.id for n in nodes.values() if isinstance(n, Entry)]
    if len(entries) != 1:
        out.add("nodes", "exactly one node of type 'entry'" + (f" (found {', '.join(entries)})" if entries else ""))
    _check_graph(nodes, paths, entries[0] if len(entries) == 1 else None, out)
    if out.items:
        raise DefinitionError(out.items)
    for node in nodes.values():
        if isinstance(node, Branch) and node.test.kind == "converted" and goal is None:
            out.add(paths[node.id], f"node {node.id!r} tests 'converted', but the journey has no goal")
    if out.items:
        raise DefinitionError(out.items)
    return Journey(name=name.strip(), nodes=nodes, entry=entries[0], goal=goal, goal_exits=goal_exits is not False,
                   quiet_hours=quiet)


def _allowed(item: Mapping, path: str, fields: set[str], out: _Problems) -> None:
    for key in item:
        if key not in fields | {"id", "type", "name"}:
            out.add(f"{path}.{key}", f"node {item.get('id')!r}: unknown field for a node of type {item.get('type')!r}")


def _naming(label: str, out: _Problems, since: int) -> None:
    """Prefix the problems added since ``since`` (by parse_rule, _where) with the node's label."""
    out.items[since:] = [(p, f"{label}: {r}") for p, r in out.items[since:]]


def _node(item: Mapping, node_id: str, path: str, out: _Problems, templates: Mapping[int, str] | None,
          segments: Mapping[int, str] | None) -> Node | None:
    kind = item.get("type")
    label = f"node {node_id!r}"
    if kind not in NODE_TYPES:
        out.add(f"{path}.type", f"{label}: unknown type {kind!r}; one of {', '.join(NODE_TYPES)}")
        return None
    nxt = item.get("next")
    if kind != "exit" and kind not in ("condition", "split") and not isinstance(nxt, str):
        out.add(f"{path}.next", f"{label}: the id of the node that follows")
    nxt = nxt if isinstance(nxt, str) else None
    if kind == "entry":
        fields = {"event", "topic", "where", "segment_id", "reentry", "reentry_window", "dedup_key", "limit"}
        _allowed(item, path, fields | {"next"}, out)
        since = len(out.items)
        rule = parse_rule({k: v for k, v in item.items() if k in fields}, path, problems=out)
        _naming(label, out, since)
        if rule is not None and rule.segment_id is not None and segments is not None:
            if rule.segment_id not in segments:
                out.add(f"{path}.segment_id", f"{label}: no segment {rule.segment_id}")
            elif rule.event is None and segments[rule.segment_id] != "dynamic":
                out.add(f"{path}.segment_id", f"{label}: users enter a dynamic segment; {rule.segment_id} is "
                        f"{segments[rule.segment_id]}")
        return Entry(node_id, kind, nxt, rule=rule or Rule(None))
    if kind == "send":
        _allowed(item, path, {"channel", "template_id", "variants", "variables", "category", "transactional", "next"}, out)
        channel = item.get("channel")
        if channel not in CHANNELS:
            out.add(f"{path}.channel", f"{label}: unknown channel {channel!r}; one of {', '.join(CHANNELS)}")
        tid = item.get("template_id")
        if isinstance(tid, bool) or not isinstance(tid, int) or tid < 1:
            out.add(f"{path}.template_id", f"{label}: the id of a template for its channel")
        elif templates is not None:
            if tid not in templates:
                out.add(f"{path}.template_id", f"{label}: no template {tid}")
            elif channel in CHANNELS and templates[tid] != channel:
                out.add(f"{path}.template_id", f"{label}: template {tid} is for {templates[tid]}, not {channel}")
        variants = _variants(item.get("variants"), f"{path}.variants", label, out)
        variables = item.get("variables") or {}
        if not isinstance(variables, Mapping):
            out.add(f"{path}.variables", f"{label}: an object of template variables")
            variables = {}
        category = item.get("category")
        if category is not None and (not isinstance(category, str) or not category):
            out.add(f"{path}.category", f"{label}: a message category such as 'promotional'")
        return Send(node_id, kind, nxt, channel=channel if channel in CHANNELS else "email",
                    template_id=tid if isinstance(tid, int) else None, variants=variants, variables=dict(variables),
                    category=category, transactional=bool(item.get("transactional", False)))
    if kind == "wait":
        _allowed(item, path, {"duration", "until_time", "until_date", "next"}, out)
        given = [k for k in ("duration", "until_time", "until_date") if k in item]
        if len(given) != 1:
            out.add(path, f"{label}: exactly one of duration, until_time or until_date")
            return Wait(node_id, kind, nxt, seconds=1)
        if "duration" in item:
            seconds = parse_seconds(item["duration"])
            if seconds is None:
                out.add(f"{path}.duration", f"{label}: a duration such as '1_day' or '30_minutes'")
            return Wait(node_id, kind, nxt, seconds=seconds or 1)
        if "until_time" in item:
            raw = item["until_time"]
            match = _CLOCK.match(raw) if isinstance(raw, str) else None
            if not match:
                out.add(f"{path}.until_time", f"{label}: a local time of day such as '09:00'")
                return Wait(node_id, kind, nxt, until_time=time(0, 0))
            return Wait(node_id, kind, nxt, until_time=time(int(match.group(1)), int(match.group(2))))
        spec = item["until_date"]
        date_field = spec.get("field") if isinstance(spec, Mapping) else None
        if not isinstance(date_field, str) or not (date_field == "created_at" or date_field.startswith("attributes.")):
            out.add(f"{path}.until_date.field", f"{label}: 'created_at' or 'attributes.<name>' holding a date")
        offset = parse_seconds(spec.get("offset", 0), signed=True) if isinstance(spec, Mapping) else 0
        if offset is None:
            out.add(f"{path}.until_date.offset", f"{label}: a signed duration such as '-3_days'")
        return Wait(node_id, kind, nxt, date_field=date_field if isinstance(date_field, str) else "created_at",
                    offset_s=offset or 0)
    if kind == "wait_for_event":
        _allowed(item, path, {"event", "of", "where", "timeout", "next", "timeout_next"}, out)
        event = item.get("event")
        of = item.get("of")
        if not isinstance(event, str) or not _EVENT.match(event):
            out.add(f"{path}.event", f"{label}: 'opened' or 'clicked' (of a send node) or a user event name")
        elif event in ENGAGEMENT and not isinstance(of, str):
            out.add(f"{path}.of", f"{label}: the send node whose message is {event}")
        elif event not in ENGAGEMENT and of is not None:
            out.add(f"{path}.of", f"{label}: only 'opened' and 'clicked' name a send node")
        since = len(out.items)
        where = _where(item.get("where"), f"{path}.where", out)
        _naming(label, out, since)
        timeout = parse_seconds(item.get("timeout"))
        if timeout is None:
            out.add(f"{path}.timeout", f"{label}: how long to wait, such as '1_day'")
        tnext = item.get("timeout_next")
        if not isinstance(tnext, str):
            out.add(f"{path}.timeout_next", f"{label}: the node to go to when the event did not come in time")
        return WaitForEvent(node_id, kind, nxt, event=event if isinstance(event, str) else "",
                            of=of if isinstance(of, str) else None, where=where, timeout_s=timeout or 1,
                            timeout_next=tnext if isinstance(tnext, str) else None)
    if kind == "condition":
        _allowed(item, path, {"if", "then", "else"}, out)
        test = _test(item.get("if"), f"{path}.if", label, out, segments)
        then, other = item.get("then"), item.get("else")
        for key, value in (("then", then), ("else", other)):
            if not isinstance(value, str):
                out.add(f"{path}.{key}", f"{label}: the id of the node to go to")
        return Branch(node_id, kind, then if isinstance(then, str) else None, test=test or Test("converted"),
                      else_=other if isinstance(other, str) else None)
    if kind == "split":
        _allowed(item, path, {"branches"}, out)
        raw = item.get("branches")
        branches: list[tuple[int, str]] = []
        if not isinstance(raw, list) or len(raw) < 2:
            out.add(f"{path}.branches", f"{label}: two or more branches {{percent, next}}")
        else:
            for j, b in enumerate(raw):
                pct = b.get("percent") if isinstance(b, Mapping) else None
                to = b.get("next") if isinstance(b, Mapping) else None
                if isinstance(pct, bool) or not isinstance(pct, int) or not 0 < pct <= 100 or not isinstance(to, str):
                    out.add(f"{path}.branches.{j}", f"{label}: {{\"percent\": 1..100, \"next\": node id}}")
                else:
                    branches.append((pct, to))
            if len(branches) == len(raw) and sum(p for p, _ in branches) != 100:
                out.add(f"{path}.branches", f"{label}: the percentages add up to {sum(p for p, _ in branches)}, not 100")
        return Split(node_id, kind, None, branches=tuple(branches))
    _allowed(item, path, set(), out)  # exit
    return Node(node_id, kind, None)


def _variants(raw: object, path: str, label: str, out: _Problems) -> tuple[tuple[str, float], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) < 2:
        out.add(path, f"{label}: two or more variants {{id, weight}}")
        return ()
    found: list[tuple[str, float]] = []
    for j, v in enumerate(raw):
        vid = v.get("id") if isinstance(v, Mapping) else None
        weight = v.get("weight", 1) if isinstance(v, Mapping) else None
        if not isinstance(vid, str) or not vid or isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or weight <= 0:
            out.add(f"{path}.{j}", f"{label}: {{\"id\": \"A\", \"weight\": a positive number}}")
        else:
            found.append((vid, float(weight)))
    if len({v for v, _ in found}) != len(found):
        out.add(path, f"{label}: variant ids repeat")
    return tuple(found)


def _test(raw: object, path: str, label: str, out: _Problems, segments: Mapping[int, str] | None) -> Test | None:
    if not isinstance(raw, Mapping) or len(raw) != 1:
        out.add(path, f"{label}: one test: opened, clicked, converted, attribute, segment or event")
        return None
    (kind, value), = raw.items()
    if kind in ENGAGEMENT:
        if not isinstance(value, str):
            out.add(f"{path}.{kind}", f"{label}: the send node whose message was {kind}")
            return None
        return Test(kind, node=value)
    if kind == "converted":
        if value is not True:
            out.add(f"{path}.converted", f"{label}: true (the journey's goal event happened since entry)")
        return Test("converted")
    if kind == "attribute":
        try:
            criteria = parse_criteria({"conditions": [value], "logic": "AND"})
        except CriteriaError as exc:
            for p, reason in exc.problems:
                out.add(f"{path}.attribute" + p.removeprefix("criteria.conditions.0"), f"{label}: {reason}")
            return None
        cond = criteria.root.conditions[0]
        if not isinstance(cond, Condition) or cond.target.source == "event":
            out.add(f"{path}.attribute", f"{label}: a profile field or attribute (events: use the 'event' test)")
            return None
        return Test("attribute", condition=cond)
    if kind == "segment":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            out.add(f"{path}.segment", f"{label}: a segment id")
            return None
        if segments is not None and value not in segments:
            out.add(f"{path}.segment", f"{label}: no segment {value}")
        return Test("segment", segment_id=value)
    if kind == "event":
        if not isinstance(value, str) or not _EVENT.match(value):
            out.add(f"{path}.event", f"{label}: an event name (true if it happened since the user entered)")
            return None
        return Test("event", event=value)
    out.add(path, f"{label}: unknown test {kind!r}; one of opened, clicked, converted, attribute, segment, event")
    return None


def _check_graph(nodes: Mapping[str, Node], paths: Mapping[str, str], entry: str | None, out: _Problems) -> None:
    """References exist; the entry reaches every node; every loop has a wait on it."""
    for node in nodes.values():
        path, label = paths[node.id], f"node {node.id!r}"
        for target in successors(node):
            if target not in nodes:
                out.add(path, f"{label} leads to {target!r}, which is not a node")
            elif isinstance(nodes[target], Entry):
                out.add(path, f"{label} leads back to the entry; users enter only by the entry's rule")
        if isinstance(node, (WaitForEvent, Branch)) and (node.of if isinstance(node, WaitForEvent) else node.test.node):
            named = node.of if isinstance(node, WaitForEvent) else node.test.node
            if not isinstance(nodes.get(named), Send):
                out.add(path, f"{label} reads the message of {named!r}, which is not a send node")
    if entry is None:
        return
    seen, stack = {entry}, [entry]
    while stack:
        for target in successors(nodes[stack.pop()]):
            if target in nodes and target not in seen:
                seen.add(target)
                stack.append(target)
    for node_id in nodes:
        if node_id not in seen:
            out.add(paths[node_id], f"node {node_id!r} cannot be reached from the entry")
    cycle = _loop_without_wait(nodes)
    if cycle:
        out.add(paths[cycle[0]], "nodes " + " → ".join(repr(n) for n in cycle) + " loop without a wait")


def _loop_without_wait(nodes: Mapping[str, Node]) -> list[str] | None:
    """A cycle through nodes none of which waits (a user would go round it forever at once), or None."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node_id: str) -> list[str] | None:
        state[node_id] = 1
        path.append(node_id)
        node = nodes[node_id]
        if not waits(node):
            for target in successors(node):
                if target not in nodes:
                    continue
                if state.get(target) == 1:
                    return path[path.index(target):] + [target]
                if target not in state and (found := visit(target)):
                    return found
        path.pop()
        state[node_id] = 2
        return None

    for node_id in nodes:
        if node_id not in state and (found := visit(node_id)):
            return found
    return None

"""What a campaign may do next, and whether its definition holds together.

Pure decisions over plain values, shared by the API (create, update, launch)
and by whatever fires scheduled campaigns later, so the rules live in one place:

    draft ──► scheduled ──► active ◄──► paused
      │         ▲  ▲ │         │  ▲        │
      └─────────┼──┼─┼─────────┘  │        ▼
       (launch  │  │ └──► paused  └──── completed
       of an    │  │  (between runs;     (from active or paused; from scheduled
       immediate│  └── resumed: back      when a recurring campaign's last
       campaign)│      to scheduled)      occurrence passed)
                └── active: a recurring run completed and another is to come
    cancelled: from any state that is not final (completed, cancelled)

Validation helpers return ``(field, reason)`` pairs instead of raising, so
the API can answer every problem of a request in one 422.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter

from pipeline.anniversaries import date_field_problem
from pipeline.attribution import goal_problems  # noqa: F401 - a campaign rule (conversion goals), kept with its data
from pipeline.journeys.model import DefinitionError, parse_rule
from pipeline.schedule import next_occurrence

Problem = tuple[str, str]

STATUSES = ("draft", "scheduled", "active", "paused", "completed", "cancelled")
FINAL_STATUSES = frozenset({"completed", "cancelled"})
# Content, audience and schedule are frozen once a campaign has started sending.
EDITABLE_STATUSES = frozenset({"draft", "scheduled"})

TRANSITIONS: Mapping[str, tuple[str, ...]] = {
    "draft": ("scheduled", "active", "cancelled"),
    "scheduled": ("active", "cancelled", "paused", "completed"),
    "active": ("paused", "completed", "cancelled", "scheduled"),
    "paused": ("active", "scheduled", "completed", "cancelled"),
    "completed": (),
    "cancelled": (),
}

# How a status change is named in control records and the audit log.
CONTROL_ACTIONS: Mapping[tuple[str, str], str] = {
    ("active", "paused"): "pause",
    ("paused", "active"): "resume",
    ("scheduled", "paused"): "pause",  # between runs: the occurrences that fall while paused are skipped
    ("paused", "scheduled"): "resume",
    ("active", "completed"): "complete",
    ("paused", "completed"): "complete",
    ("draft", "cancelled"): "cancel",
    ("scheduled", "cancelled"): "cancel",
    ("active", "cancelled"): "cancel",
    ("paused", "cancelled"): "cancel",
}

CAMPAIGN_TYPES = ("immediate", "scheduled", "triggered", "recurring")
CHANNELS = ("email", "sms", "push", "in_app", "webhook")

# Inline content parts per channel (as pipeline.templates names them, plus the webhook's target url),
# and which must be present when no template is named: each inner tuple needs at least one of its parts.
CONTENT_PARTS: Mapping[str, frozenset[str]] = {
    "email": frozenset({"subject", "html", "text"}),
    "sms": frozenset({"body"}),
    "push": frozenset({"title", "body", "action_url", "image_url"}),
    "in_app": frozenset({"title", "body", "action_url", "image_url"}),
    "webhook": frozenset({"url", "payload"}),
}
REQUIRED_PARTS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "email": (("subject",), ("html", "text")),
    "sms": (("body",),),
    "push": (("title",), ("body",)),
    "in_app": (("title",), ("body",)),
    "webhook": (("payload",),),
}
# Keys of a channel's content that are not template text.
CONTENT_SETTINGS = frozenset({"template_id", "variables", "language"})

_VARIANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_CENT = Decimal("0.0001")


class IllegalTransition(Exception):
    """A status change the state machine does not allow; ``allowed`` is what is allowed from ``current``."""

    def __init__(self, current: str, target: str, allowed: Sequence[str]) -> None:
        self.current = current
        self.target = target
        self.allowed = tuple(allowed)
        if not self.allowed:
            message = f"a {current} campaign is final and cannot become {target}"
        else:
            message = f"a {current} campaign cannot become {target}; allowed from {current}: {', '.join(self.allowed)}"
        super().__init__(message)


def allowed_transitions(current: str) -> tuple[str, ...]:
    if current not in TRANSITIONS:
        raise ValueError(f"unknown campaign status {current!r}")
    return TRANSITIONS[current]


def transition(current: str, target: str) -> str:
    """``target`` if a campaign in ``current`` may move there, else ``IllegalTransition``."""
    allowed = allowed_transitions(current)
    if target not in allowed:
        raise IllegalTransition(current, target, allowed)
    return target


def launch_status(campaign_type: str, start_time: datetime | None, now: datetime,
                  trigger: Mapping[str, Any] | None = None) -> str:
    """Where a launch takes a campaign: ``scheduled`` if it starts later (or on a cron), else ``active``."""
    campaign_type, _ = run_plan(campaign_type, None, trigger)
    if campaign_type == "recurring":
        return "scheduled"
    if start_time is not None and start_time > now:
        return "scheduled"
    return "active"


def resume_status(run_sending: bool) -> str:
    """Where resuming a paused campaign takes it: back to sending if a run (or an immediate launch) was
    sending when it paused, else back to waiting for its next occurrence."""
    return "active" if run_sending else "scheduled"


def control_action(current: str, target: str) -> str | None:
    """The control record's action for a status change, or None when no running campaign is affected."""
    return CONTROL_ACTIONS.get((current, target))


# ---------------------------------------------------------------- validation


def channel_problems(channels: Sequence[str]) -> list[Problem]:
    problems: list[Problem] = []
    if not channels:
        problems.append(("channels", "at least one channel is required"))
    seen: set[str] = set()
    for i, channel in enumerate(channels):
        if channel not in CHANNELS:
            problems.append((f"channels.{i}", f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}"))
        elif channel in seen:
            problems.append((f"channels.{i}", f"channel {channel!r} is listed twice"))
        seen.add(channel)
    return problems


def ab_test_problems(ab_test: Mapping[str, Any] | None) -> list[Problem]:
    """An enabled A/B test needs two or more variants with unique ids whose weights sum to 100."""
    if not ab_test or not ab_test.get("enabled"):
        return []
    variants = ab_test.get("variants") or []
    problems: list[Problem] = []
    if len(variants) < 2:
        problems.append(("ab_test.variants", "an enabled A/B test needs at least two variants"))
    seen: set[str] = set()
    for i, variant in enumerate(variants):
        vid, weight = variant.get("id"), variant.get("weight")
        if not isinstance(vid, str) or not _VARIANT_ID.match(vid):
            problems.append((f"ab_test.variants.{i}.id", "variant ids are 1 to 32 letters, digits, '_' or '-'"))
        elif vid in seen:
            problems.append((f"ab_test.variants.{i}.id", f"variant id {vid!r} is used twice"))
        seen.add(vid)
        if not isinstance(weight, (int, float)) or weight <= 0:
            problems.append((f"ab_test.variants.{i}.weight", "a weight is a number above 0"))
    weights = [v.get("weight") for v in variants if isinstance(v.get("weight"), (int, float))]
    if variants and len(weights) == len(variants) and abs(sum(weights) - 100) > 1e-9:
        problems.append(("ab_test.variants", f"weights must sum to 100, they sum to {sum(weights):g}"))
    return problems


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def window_problems(start_time: datetime | None, end_time: datetime | None, now: datetime) -> list[Problem]:
    problems: list[Problem] = []
    if start_time is not None and end_time is not None and _aware(start_time) >= _aware(end_time):
        problems.append(("end_time", "end_time must be after start_time"))
    if end_time is not None and _aware(end_time) <= now:
        problems.append(("end_time", "end_time is in the past"))
    return problems


def schedule_problems(schedule: Mapping[str, Any] | None) -> list[Problem]:
    """A recurring schedule: a five-field cron expression and an IANA time zone."""
    if schedule is None:
        return []
    problems: list[Problem] = []
    cron = schedule.get("cron")
    if not isinstance(cron, str) or not cron.strip():
        problems.append(("schedule.cron", "a cron expression such as '0 9 * * MON' is required"))
    elif len(cron.split()) != 5 or not croniter.is_valid(cron):
        problems.append(("schedule.cron", f"{cron!r} is not a five-field cron expression"))
    problems += zone_problems("schedule.timezone", schedule.get("timezone", "UTC"))
    return problems


def zone_problems(field: str, tz: object) -> list[Problem]:
    """``tz`` must name an IANA time zone (``field`` is where it was given)."""
    try:
        if not isinstance(tz, str) or not tz:
            raise ZoneInfoNotFoundError(tz)
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return [(field, f"{tz!r} is not an IANA time zone such as 'Europe/Paris'")]
    return []


def next_run(schedule: Mapping[str, Any], after: datetime) -> datetime:
    """The first cron occurrence strictly after ``after``, evaluated in the schedule's time zone, in UTC
    (daylight saving as ``pipeline.schedule`` reads it)."""
    try:
        return next_occurrence(schedule["cron"], schedule.get("timezone"), after)
    except CroniterBadCronError as exc:  # pragma: no cover - validated before
        raise ValueError(str(exc)) from None


def start_problems(campaign_type: str, start_time: datetime | None, now: datetime) -> list[Problem]:
    """A scheduled campaign being created or edited starts in the future."""
    if campaign_type == "scheduled" and start_time is not None and _aware(start_time) <= now:
        return [("start_time", "start_time is in the past; a scheduled campaign starts later")]
    return []


def first_run(
    campaign_type: str, start_time: datetime | None, schedule: Mapping[str, Any] | None, now: datetime,
    trigger: Mapping[str, Any] | None = None,
) -> datetime | None:
    """When a campaign launched at ``now`` first sends: its start, or a recurring one's next cron time after it."""
    campaign_type, schedule = run_plan(campaign_type, schedule, trigger)
    if campaign_type == "recurring" and schedule:
        return next_run(schedule, max(now, _aware(start_time)) if start_time else now)
    if start_time is not None and _aware(start_time) > now:
        return _aware(start_time)
    return now


def type_problems(
    campaign_type: str,
    start_time: datetime | None,
    schedule: Mapping[str, Any] | None,
    trigger: Mapping[str, Any] | None,
    segment_id: int | None,
) -> list[Problem]:
    """What each campaign type needs: a start for scheduled, a cron for recurring, an event rule or a
    profile date for triggered."""
    problems: list[Problem] = []
    if campaign_type not in CAMPAIGN_TYPES:
        return [("type", f"unknown campaign type {campaign_type!r}; known: {', '.join(CAMPAIGN_TYPES)}")]
    if campaign_type == "scheduled" and start_time is None:
        problems.append(("start_time", "a scheduled campaign needs a start_time"))
    if campaign_type == "recurring" and schedule is None:
        problems.append(("schedule", "a recurring campaign needs a schedule {cron, timezone}"))
    if campaign_type != "recurring" and schedule is not None:
        problems.append(("schedule", "only recurring campaigns have a cron schedule"))
    if campaign_type == "triggered":
        if trigger is None:
            problems.append(("trigger", "a triggered campaign needs a trigger {event, ...} or {date_field}"))
        elif is_date_trigger(trigger):
            if "event" in trigger:
                problems.append(("trigger", "a trigger is an event or a profile date, not both"))
            problem = date_field_problem(trigger["date_field"])
            if problem:
                problems.append(("trigger.date_field", problem))
        else:
            problems += event_trigger_problems(trigger)
    elif trigger is not None:
        problems.append(("trigger", "only triggered campaigns have a trigger"))
    if (campaign_type != "triggered" or is_date_trigger(trigger)) and segment_id is None:
        problems.append(("target_segment_id", f"a {campaign_type} campaign needs a target segment"))
    return problems


EVENT_TRIGGER_FIELDS = ("event", "topic", "where", "reentry", "reentry_window", "dedup_key", "limit")


def event_trigger_problems(trigger: object) -> list[Problem]:
    """An event trigger is an entry rule as journeys read it (``pipeline.journeys.model.parse_rule``):
    ``event``, ``topic`` (default user-events), ``where`` (segment DSL conditions on the event's
    properties), ``reentry`` (once, every, window with ``reentry_window``), ``dedup_key`` and ``limit``.
    It has no ``segment_id``: the campaign's own ``target_segment_id`` is the audience the user must
    also be in (optional for an event trigger)."""
    problems: list[Problem] = []
    if isinstance(trigger, Mapping):
        for key in trigger:
            if key == "segment_id":
                problems.append(("trigger.segment_id", "a campaign's audience is its target_segment_id,"
                                                       " not a trigger field"))
            elif key not in EVENT_TRIGGER_FIELDS:
                problems.append((f"trigger.{key}", f"unknown field; allowed: {', '.join(EVENT_TRIGGER_FIELDS)}"))
        trigger = {k: v for k, v in trigger.items() if k in EVENT_TRIGGER_FIELDS}
    try:
        parse_rule(trigger, "trigger")
    except DefinitionError as exc:
        problems += exc.problems
    return problems


# A date trigger runs once a day at 00:00 UTC: each run covers every user's next local hour after it
# (pipeline/anniversaries.py), so runs 24 h apart cover each user's days once each, whatever their zone.
# The first run is the first 00:00 UTC after the launch (a run at launch would cover some users' next
# day twice, with the 00:00 run after it).
DAILY_RUN = {"cron": "0 0 * * *", "timezone": "UTC"}


def run_plan(campaign_type: str, schedule: Mapping[str, Any] | None, trigger: Mapping[str, Any] | None
             ) -> tuple[str, Mapping[str, Any] | None]:
    """How the scheduler runs a campaign: as its type says, and a date trigger as a recurring campaign on
    ``DAILY_RUN``."""
    if campaign_type == "triggered" and is_date_trigger(trigger):
        return "recurring", DAILY_RUN
    return campaign_type, schedule


def is_date_trigger(trigger: Mapping[str, Any] | None) -> bool:
    """A date trigger (a birthday, a sign-up anniversary): ``{"date_field": "attributes.birthday"}``; each
    user gets the campaign once a year on that date's anniversary, at the hour of ``delivery.local_time``
    in their own zone (pipeline/anniversaries.py)."""
    return isinstance(trigger, Mapping) and "date_field" in trigger


def budget_problems(budget: Mapping[str, Any] | None, currencies: Iterable[str]) -> list[Problem]:
    if budget is None:
        return []
    problems: list[Problem] = []
    max_spend = budget.get("max_spend")
    if not isinstance(max_spend, (int, float, Decimal)) or max_spend <= 0:
        problems.append(("budget.max_spend", "max_spend must be a number above 0"))
    currency = budget.get("currency")
    known = frozenset(currencies)
    if currency not in known:
        problems.append(("budget.currency", f"unknown currency {currency!r}; known: {', '.join(sorted(known))}"))
    return problems


_LOCAL_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
IF_PASSED = ("next_day", "skip")  # pipeline.gate.IF_PASSED; next_day is the default there
DELIVERY_TYPES = ("immediate", "scheduled", "recurring")


def delivery_problems(delivery: Mapping[str, Any] | None, campaign_type: str,
                      trigger: Mapping[str, Any] | None = None) -> list[Problem]:
    """Each recipient's local hour: ``local_time`` HH:MM (24 h), ``if_passed`` next_day or skip, an
    optional IANA ``timezone`` for users without one; for campaigns sent to an audience at a time
    (a triggered message goes when its event comes)."""
    if delivery is None:
        if is_date_trigger(trigger):
            return [("delivery.local_time", "a date-triggered campaign sends at a local hour such as '09:00'")]
        return []
    problems: list[Problem] = []
    if campaign_type not in DELIVERY_TYPES and not is_date_trigger(trigger):
        problems.append(("delivery", f"local-hour delivery is for {', '.join(DELIVERY_TYPES)} campaigns,"
                                     f" not {campaign_type}"))
    local_time = delivery.get("local_time")
    if not isinstance(local_time, str) or not _LOCAL_TIME.match(local_time):
        problems.append(("delivery.local_time", f"{local_time!r} is not a 24-hour time HH:MM such as '09:00'"))
    if_passed = delivery.get("if_passed", "next_day")
    if if_passed not in IF_PASSED:
        problems.append(("delivery.if_passed", f"unknown value {if_passed!r}; known: {', '.join(IF_PASSED)}"))
    if delivery.get("timezone") is not None:
        problems += zone_problems("delivery.timezone", delivery["timezone"])
    return problems


class TemplateChecks(Protocol):
    """What content validation needs from the template engine (``pipeline.templates``)."""

    def unresolved_variables(self, parts: Mapping[str, str], provided: Mapping[str, Any]) -> list[str]: ...

    def template_syntax_problems(self, parts: Mapping[str, str]) -> list[tuple[str, str]]: ...


def inline_parts(channel: str, entry: Mapping[str, Any]) -> dict[str, str]:
    """The template text written in the campaign itself (webhook payload strings included)."""
    parts = {k: v for k, v in entry.items() if k in CONTENT_PARTS.get(channel, ()) and isinstance(v, str)}
    payload = entry.get("payload")
    if channel == "webhook" and isinstance(payload, Mapping):  # an object: its string values are templates
        parts |= {f"payload.{k}": v for k, v in payload.items() if isinstance(v, str)}
    return parts


def template_parts(template: Mapping[str, Any]) -> dict[str, str]:
    """Every piece of text a stored template may render: default parts, variants and translations."""
    found: dict[str, str] = {}

    def take(prefix: str, parts: object) -> None:
        if isinstance(parts, Mapping):
            found.update({f"{prefix}{k}": v for k, v in parts.items() if isinstance(v, str)})

    take("", template.get("parts"))
    translations = template.get("translations")
    for language, parts in translations.items() if isinstance(translations, Mapping) else ():
        take(f"translations.{language}.", parts)
    variants = template.get("variants")
    for name, variant in variants.items() if isinstance(variants, Mapping) else ():
        if isinstance(variant, Mapping):
            take(f"variants.{name}.", variant)
            for language, parts in (variant.get("translations") or {}).items():
                take(f"variants.{name}.translations.{language}.", parts)
    return found


def _present(part: object) -> bool:
    return (isinstance(part, str) and bool(part.strip())) or isinstance(part, Mapping)


def content_problems(
    channels: Sequence[str],
    content: Mapping[str, Any],
    templates: Mapping[int, Mapping[str, Any] | None],
    checks: TemplateChecks,
) -> list[Problem]:
    """Every channel has content; named templates exist on that channel; text parses; variables resolve.

    ``templates`` maps each template_id named in ``content`` to the stored
    template (None if it does not exist).
    """
    problems: list[Problem] = []
    for channel in channels:
        if channel in CHANNELS and channel not in content:
            problems.append((f"content.{channel}", f"the campaign sends {channel} but has no {channel} content"))
    for channel, entry in content.items():
        where = f"content.{channel}"
        if channel not in CHANNELS:
            problems.append((where, f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}"))
            continue
        if channel not in channels:
            problems.append((where, f"content for {channel!r}, which is not one of the campaign's channels"))
            continue
        if not isinstance(entry, Mapping):
            problems.append((where, "channel content is an object"))
            continue
        allowed = CONTENT_PARTS[channel] | CONTENT_SETTINGS
        problems += [(f"{where}.{k}", f"unknown {channel} content field") for k in entry if k not in allowed]
        variables = entry.get("variables") or {}
        if not isinstance(variables, Mapping):
            problems.append((f"{where}.variables", "variables is an object of names to values"))
            variables = {}
        if channel == "webhook":
            url = entry.get("url")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                problems.append((f"{where}.url", "the webhook needs an http(s) url to POST to"))
        inline = inline_parts(channel, entry)
        problems += [(f"{where}.{k}", "must be a string") for k in entry
                     if k in CONTENT_PARTS[channel] and not isinstance(entry[k], str)
                     and not ((channel, k) == ("webhook", "payload") and isinstance(entry[k], Mapping))]
        syntax = checks.template_syntax_problems(inline) if inline else []
        problems += [(f"{where}.{part}", reason) for part, reason in syntax]

        texts = dict(inline)
        template_id = entry.get("template_id")
        if template_id is not None:
            if not isinstance(template_id, int) or isinstance(template_id, bool):
                problems.append((f"{where}.template_id", "template_id is an integer"))
                continue
            template = templates.get(template_id)
            if template is None:
                problems.append((f"{where}.template_id", f"no template {template_id}"))
                continue
            if template.get("channel") != channel:
                problems.append((f"{where}.template_id",
                                 f"template {template_id} is a {template.get('channel')} template, not {channel}"))
                continue
            # Inline parts override the template's parts of the same name.
            texts = {**template_parts(template), **inline}
        else:
            for needed in REQUIRED_PARTS[channel]:
                if not any(_present(entry.get(p)) for p in needed):
                    problems.append((f"{where}.{needed[0]}",
                                     f"{' or '.join(needed)} is required when no template_id is given"))
        if syntax:
            continue  # unparsable text has no reliable variable list
        missing = checks.unresolved_variables(texts, variables) if texts else []
        if missing:
            problems.append((f"{where}.variables", f"no value for template variable(s): {', '.join(missing)}"))
    return problems


def template_ids(content: Mapping[str, Any]) -> list[int]:
    """The template ids named in ``content`` (to fetch before ``content_problems``)."""
    ids = []
    for entry in content.values():
        tid = entry.get("template_id") if isinstance(entry, Mapping) else None
        if isinstance(tid, int) and not isinstance(tid, bool):
            ids.append(tid)
    return sorted(set(ids))


# ---------------------------------------------------------------- cost


def cost_per_recipient(channels: Iterable[str], unit_costs: Mapping[str, float]) -> Decimal:
    """What reaching one recipient on every channel costs."""
    return sum((Decimal(str(unit_costs.get(c, 0.0))) for c in channels), Decimal(0))


def estimated_cost(recipients: int | None, channels: Iterable[str], unit_costs: Mapping[str, float]) -> Decimal | None:
    """Recipients × the summed unit cost of the campaign's channels, to 1/10,000 of the currency unit."""
    if recipients is None:
        return None
    return (cost_per_recipient(channels, unit_costs) * recipients).quantize(_CENT, rounding=ROUND_HALF_UP)

"""What is live, and which flows an event concerns: an index over every loaded flow. Pure, no I/O.

Built by pipeline/journeys_io.py from PostgreSQL (journeys' versions, event-triggered campaigns)
and read per event by both trigger stages:

    match_triggers    ``forward(topic, event)``: does any flow need this event? (most events: no)
    advance_journeys  ``entering(topic, event)``: live flows whose entry rule it matches;
                      ``listening(topic, name)``: flows whose members wait for it, or exit on it;
                      ``version(flow, v)``: the version a member entered with; ``step_of(campaign)``
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipeline.journeys.engine import Flow
from pipeline.journeys.model import DEFAULT_TOPIC, Branch, WaitForEvent
from pipeline.journeys.rules import Event, matches

# Entries into a dynamic segment arrive as events of this pseudo topic (pipeline/journeys_io.py's segment
# watcher writes them to journey-signals): no Kafka topic of that name is read.
SEGMENT_TOPIC = "herald.segment-entries"


def segment_event(flow_key: str) -> str:
    """The name of the event that enters a user into segment-entry flow ``flow_key``."""
    return f"segment_entered.{flow_key}"


@dataclass
class FlowIndex:
    versions: dict[str, dict[int, Flow]] = field(default_factory=dict)
    current: dict[str, Flow] = field(default_factory=dict)  # what new entrants get (live flows only)
    stopped: set[str] = field(default_factory=set)  # flows whose members leave
    entries: dict[tuple[str, str], list[Flow]] = field(default_factory=dict)
    listeners: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    steps: dict[int, tuple[str, str]] = field(default_factory=dict)  # campaign → (flow, send node)
    segment_entries: list[Flow] = field(default_factory=list)

    @classmethod
    def build(cls, flows: Iterable[Flow], current: Mapping[str, int], stopped: Iterable[str] = ()) -> FlowIndex:
        """``flows``: every version still needed; ``current``: flow → the version new entrants get."""
        index = cls(stopped=set(stopped))
        for flow in flows:
            index.versions.setdefault(flow.key, {})[flow.version] = flow
            for node, campaign in flow.campaigns.items():
                if not flow.whole_campaign:
                    index.steps[campaign] = (flow.key, node)
            journey = flow.journey
            heard = []
            if journey.goal is not None and journey.goal.event:
                heard.append((journey.goal.topic, journey.goal.event))
            for node in journey.nodes.values():
                if isinstance(node, WaitForEvent) and node.of is None and node.event:
                    heard.append((DEFAULT_TOPIC, node.event))
                elif isinstance(node, Branch) and node.test.kind == "event" and node.test.event:
                    heard.append((DEFAULT_TOPIC, node.test.event))
            for key in heard:
                index.listeners.setdefault(key, set()).add(flow.key)
        for key, version in current.items():
            flow = index.versions.get(key, {}).get(version)
            if flow is None or not flow.live or key in index.stopped:
                continue
            index.current[key] = flow
            rule = flow.rule
            if rule.event is None:
                index.segment_entries.append(flow)
                index.entries.setdefault((SEGMENT_TOPIC, segment_event(key)), []).append(flow)
            else:
                index.entries.setdefault((rule.topic, rule.event), []).append(flow)
        return index

    @property
    def topics(self) -> set[str]:
        return ({topic for topic, _ in self.entries} | {topic for topic, _ in self.listeners}) - {SEGMENT_TOPIC}

    def entering(self, topic: str, event: Event, now: float) -> list[Flow]:
        candidates = self.entries.get((topic, event.name))
        if not candidates:
            return []
        when = datetime.fromtimestamp(now, tz=timezone.utc)
        return [f for f in candidates if (f.rule.event is None and topic == SEGMENT_TOPIC) or matches(f.rule, event, when)]

    def listening(self, topic: str, name: str) -> set[str]:
        return self.listeners.get((topic, name), set())

    def forward(self, topic: str, event: Event, now: float) -> bool:
        """Whether any flow needs ``event``: an entry rule it matches, or members listening for it."""
        return (topic, event.name) in self.listeners or bool(self.entering(topic, event, now))

    def version(self, key: str, version: int) -> Flow | None:
        return self.versions.get(key, {}).get(version)

    def step_of(self, campaign_id: int) -> tuple[str, str] | None:
        return self.steps.get(campaign_id)

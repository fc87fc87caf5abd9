"""Imports run one way, and close no circle.

    config → schemas → pure pipeline → pipeline I/O → the Faust app → agents, tables, api → scripts, bench

Every import counts, a late one inside a function too. ``tables`` may be read by ``agents``
(an agent updates the tables of its stage); otherwise agents, tables and api are siblings that
do not import each other, and no agent imports another agent (``agents/_*.py`` hold what every
agent does at its edge, and are no agents).
"""

from __future__ import annotations

from functools import cache

import pytest

from tests.helpers.imports import imports_of, modules

APP = ("pipeline.app", "pipeline.worker")  # the Faust app and its entry point
# Libraries that talk to the world: a module that reaches one of them (itself, or through what it
# imports) is pipeline I/O, not a pure decision.
IO_LIBRARIES = frozenset({
    "aiohttp", "aiokafka", "aiosmtplib", "asyncpg", "cassandra", "faust", "httpx", "kafka", "mode", "redis",
    "socket", "ssl", "uvicorn", "starlette",
})
# The decision modules: plain functions over plain values, unit-tested without a server.
PURE = (
    "pipeline.anniversaries", "pipeline.campaigns", "pipeline.explode", "pipeline.gate", "pipeline.lanes",
    "pipeline.metrics", "pipeline.control", "pipeline.aggregate", "pipeline.send.decisions", "pipeline.segments.dsl",
    "pipeline.segments.compile", "pipeline.content.engine", "pipeline.content.model", "pipeline.partitioning",
    "pipeline.schedule", "pipeline.journeys.model", "pipeline.journeys.rules", "pipeline.journeys.engine",
    "pipeline.journeys.flows", "pipeline.journeys.timers", "pipeline.journeys.matching", "pipeline.pii",
)


def rank(name: str) -> float:
    top = name.split(".")[0]
    if name in APP:
        return 4
    return {"config": 0, "schemas": 1, "pipeline": 2, "tables": 5, "agents": 5.5, "api": 5,
            "scripts": 6, "bench": 6}[top]


def test_the_tree_is_read():
    assert {"pipeline.app", "agents.gate", "api.app", "schemas.topics", "schemas.keys"} <= set(modules())
    ours, outside = imports_of("agents.gate")
    assert "pipeline.gate" in ours and "orjson" in outside


def test_no_import_runs_upward():
    upward = []
    for name in sorted(modules()):
        for target in sorted(imports_of(name)[0]):
            if rank(target) > rank(name):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_agents_tables_and_api_do_not_import_each_other():
    crossed = []
    for name in sorted(modules()):
        top = name.split(".")[0]
        for target in sorted(imports_of(name)[0]):
            other = target.split(".")[0]
            if top in ("agents", "tables", "api") and other in ("agents", "tables", "api") and other != top:
                if not (top == "agents" and other == "tables"):
                    crossed.append(f"{name} imports {target}")
            elif top == other == "agents" and target != "agents" and not target.startswith("agents._"):
                crossed.append(f"{name} imports another agent, {target}")
    assert crossed == []


def test_only_the_stages_import_the_faust_app():
    """Pipeline modules (pure or I/O) are usable without building the Faust app."""
    offenders = [f"{name} imports {target}" for name in sorted(modules()) if name.startswith("pipeline.")
                 and name not in APP for target in imports_of(name)[0] if target in APP]
    assert offenders == []


@cache
def reaches_io(name: str, seen: frozenset[str] = frozenset()) -> str | None:
    """The first I/O library ``name`` reaches, or None if it is pure."""
    ours, outside = imports_of(name)
    hit = sorted(outside & IO_LIBRARIES)
    if hit:
        return f"{name} → {hit[0]}"
    for target in sorted(ours):
        if target not in seen and target != name:
            found = reaches_io(target, seen | {name})
            if found:
                return f"{name} → {found}"
    return None


@pytest.mark.parametrize("name", PURE)
def test_decision_modules_are_pure(name):
    assert name in modules(), f"{name} is listed as a decision module but does not exist"
    assert reaches_io(name) is None


def test_no_import_closes_a_circle():
    graph = {name: sorted(imports_of(name)[0]) for name in modules()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert circles == []

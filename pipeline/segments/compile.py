"""Criteria -> one vectorized polars predicate over the store's raw columns.

Each condition becomes a comparison on a numpy-backed column (sentinel nulls,
see ``columns.py``); groups become ``&`` / ``|``; excluded segments become
``& ~(their predicate)`` (dynamic) or ``& ~(a row mask)`` (static member ids).
Conditions known to be always true or false (an unknown event, a value no
user has) fold into Python booleans, so the predicate never carries a literal
that polars would fail to broadcast.

Imports run one way, dsl/columns → compile → store → live/snapshot: the store
hands itself in as ``Columns``, the little the compiler reads of it.

Semantics, in the product's words:
- a user without a value never *has* it: equals, in, contains, greater_than,
  before... are false; not_equals / not_in are their exact complements (so a
  user without a plan is "not on the free plan");
- times are UTC; "within_last 30_days" is [now - 30 days, now]; a date
  without a time means midnight UTC, and ``equals`` a date means that UTC day;
- an event "exists in last_7_days" when its last occurrence is at or after
  now - 7 days; "at_least" counts occurrences of all time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol, Union

import numpy as np
import polars as pl

from pipeline.segments.columns import BUILTIN_COLUMNS, NULL_TIME, Column, attribute_column, event_columns, to_micros
from pipeline.segments.dsl import Condition, Criteria, CriteriaError, Group, Instant, parse_instant

Predicate = Union[pl.Expr, bool]
# Excluded segments, resolved: a dynamic one as its criteria, a static one as its member ids.
Exclusions = Mapping[int, Union[Criteria, np.ndarray]]


class Columns(Protocol):
    """What the compiler reads of an audience store (``store.AudienceStore`` is one)."""

    def column(self, name: str) -> Column | None: ...

    def has_event(self, name: str) -> bool: ...

    def raw_frame(self) -> pl.DataFrame: ...

    def mask_of(self, user_ids: np.ndarray) -> np.ndarray: ...


def compile_criteria(
    store: Columns, criteria: Criteria, exclusions: Exclusions, now: datetime
) -> tuple[pl.DataFrame, Predicate]:
    """The frame to evaluate on and the predicate selecting the segment's members."""
    compiler = _Compiler(store, exclusions, now)
    predicate = compiler.criteria(criteria, "criteria", ())
    if compiler.problems:
        raise CriteriaError(compiler.problems)
    frame = store.raw_frame()
    if compiler.masks:
        frame = frame.with_columns(compiler.masks)
    return frame, predicate


def _and(a: Predicate, b: Predicate) -> Predicate:
    if a is False or b is False:
        return False
    if a is True:
        return b
    if b is True:
        return a
    return a & b


def _or(a: Predicate, b: Predicate) -> Predicate:
    if a is True or b is True:
        return True
    if a is False:
        return b
    if b is False:
        return a
    return a | b


def _not(a: Predicate) -> Predicate:
    return (not a) if isinstance(a, bool) else ~a


class _Compiler:
    def __init__(self, store: Columns, exclusions: Exclusions, now: datetime) -> None:
        self.store = store
        self.exclusions = exclusions
        self.now = now
        self.problems: list[tuple[str, str]] = []
        self.masks: list[pl.Series] = []
        self.static: dict[int, str] = {}  # segment id -> mask column

    def criteria(self, criteria: Criteria, path: str, chain: tuple[int, ...]) -> Predicate:
        predicate = self.group(criteria.root, path)
        for i, segment_id in enumerate(criteria.exclude_segments):
            where = f"{path}.exclude_segments.{i}"
            if segment_id in chain:
                self.problems.append((where, f"segment {segment_id} excludes itself (cycle)"))
                continue
            excluded = self.exclusions.get(segment_id)
            if excluded is None:
                self.problems.append((where, f"segment {segment_id} was not resolved"))
                continue
            if isinstance(excluded, Criteria):
                inner = self.criteria(excluded, where, chain + (segment_id,))
            else:
                inner = self.static_members(segment_id, excluded)
            predicate = _and(predicate, _not(inner))
        return predicate

    def static_members(self, segment_id: int, user_ids: np.ndarray) -> Predicate:
        if not len(user_ids):
            return False
        name = self.static.get(segment_id)
        if name is None:
            name = self.static[segment_id] = f"_static_{segment_id}"
            self.masks.append(pl.Series(name, self.store.mask_of(np.asarray(user_ids, dtype=np.int64))))
        return pl.col(name)

    def group(self, group: Group, path: str) -> Predicate:
        combine, result = (_and, True) if group.logic == "AND" else (_or, False)
        for i, node in enumerate(group.conditions):
            where = f"{path}.conditions.{i}"
            part = self.group(node, where) if isinstance(node, Group) else self.condition(node, where)
            result = combine(result, part)
        return result

    def condition(self, cond: Condition, path: str) -> Predicate:
        op = cond.operator
        negate = op in ("not_equals", "not_in", "not_exists")
        positive = {"not_equals": "equals", "not_in": "in", "not_exists": "exists"}.get(op, op)
        target = cond.target
        if target.source == "event":
            predicate = self.event(target.name, positive, cond.value)
        else:
            if target.source == "builtin":
                column_name = BUILTIN_COLUMNS[target.name]
            else:
                column_name = attribute_column(target.name)
            column = self.store.column(column_name)
            if column is None:  # an attribute no user has: nobody has a value
                predicate = False
            else:
                predicate = self.compare(column.kind, column_name, positive, cond.value, path)
        return _not(predicate) if negate else predicate

    def event(self, name: str, op: str, value: object) -> Predicate:
        if not self.store.has_event(name):
            return False
        count, _, last = event_columns(name)
        if op == "at_least":
            return pl.col(count) >= int(value)  # type: ignore[call-overload]
        if isinstance(value, timedelta):  # exists within a window
            return pl.col(last) >= to_micros(self.now - value)
        return pl.col(count) > 0

    def compare(self, kind: str, name: str, op: str, value: object, path: str) -> Predicate:
        col = pl.col(name)
        if op == "exists":
            return {"text": col >= 0, "number": col.is_not_nan(), "flag": col >= 0,
                    "presence": col, "time": col != NULL_TIME}[kind]
        check = getattr(self, f"_{kind}", None)
        return check(col, op, value, path) if check else self.mismatch(path, kind)

    def mismatch(self, path: str, kind: str, detail: str = "") -> bool:
        self.problems.append((f"{path}.value", f"does not fit a {kind} field{detail}"))
        return False

    def _presence(self, col: pl.Expr, op: str, value: object, path: str) -> Predicate:
        if op == "equals" and isinstance(value, bool):
            return col if value else ~col
        return self.mismatch(path, "presence", " (use exists, not_exists or equals true/false)")

    def _flag(self, col: pl.Expr, op: str, value: object, path: str) -> Predicate:
        if op == "equals" and isinstance(value, bool):
            return col == (1 if value else 0)
        return self.mismatch(path, "true/false", " (use equals true/false, exists or not_exists)")

    def _text(self, col: pl.Expr, op: str, value: object, path: str) -> Predicate:
        column = self.store.column(self._name(col))
        assert column is not None
        if op == "equals" and isinstance(value, str):
            code = column.code(value)  # type: ignore[attr-defined]
            return False if code is None else col == code
        if op == "in" and isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            codes = [c for c in (column.code(v) for v in value) if c is not None]  # type: ignore[attr-defined]
            return self._codes(col, codes, column.data.dtype)
        if op == "contains" and isinstance(value, str):
            needle = value.casefold()  # case-insensitive, as marketers expect from a search box
            codes = [i for i, text in enumerate(column.values) if needle in text.casefold()]  # type: ignore[attr-defined]
            return self._codes(col, codes, column.data.dtype)
        return self.mismatch(path, "text", f" (operator {op} with {value!r})")

    @staticmethod
    def _codes(col: pl.Expr, codes: list[int], dtype: np.dtype) -> Predicate:
        if not codes:
            return False
        if len(codes) == 1:
            return col == codes[0]
        return col.is_in(pl.Series(np.asarray(codes, dtype=dtype)).implode())

    def _number(self, col: pl.Expr, op: str, value: object, path: str) -> Predicate:
        # NaN (null) sorts above every number in polars: bound ">" from above to exclude it.
        if op == "equals" and isinstance(value, float):
            return col == value
        if op == "in" and isinstance(value, tuple) and all(isinstance(v, float) for v in value):
            return col.is_in(pl.Series(np.asarray(value, dtype=np.float64)).implode())
        if op == "greater_than" and isinstance(value, float):
            return (col > value) & col.is_not_nan()
        if op == "less_than" and isinstance(value, float):
            return col < value
        if op == "between" and isinstance(value, tuple) and all(isinstance(v, float) for v in value):
            return (col >= value[0]) & (col <= value[1])
        return self.mismatch(path, "number", f" (operator {op} with {_show(value)})")

    def _time(self, col: pl.Expr, op: str, value: object, path: str) -> Predicate:
        now = self.now
        if isinstance(value, str):  # parsed before the store knew this attribute holds dates
            value = parse_instant(value) or value
        if op == "within_last" and isinstance(value, timedelta):
            return col.is_between(to_micros(now - value), to_micros(now))
        if isinstance(value, Instant):
            at = to_micros(value.resolve(now))
            if op in ("equals",):
                if value.whole_day:
                    day = at - at % 86_400_000_000
                    return (col >= day) & (col < day + 86_400_000_000)
                return col == at
            if op in ("greater_than", "after"):
                return col > at
            if op in ("less_than", "before"):
                return (col < at) & (col != NULL_TIME)
        if op == "between" and isinstance(value, tuple) and all(isinstance(v, Instant) for v in value):
            low, high = (to_micros(v.resolve(now)) for v in value)
            return (col >= low) & (col <= high)
        return self.mismatch(path, "date", f" (operator {op} with {_show(value)})")

    @staticmethod
    def _name(col: pl.Expr) -> str:
        return col.meta.output_name()


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Instant):
        return "a date"
    return repr(value)

"""Growable typed columns of the audience store, one numpy array each.

Every column keeps its values in a numpy array with spare capacity (the store
grows them all together, geometrically), so applying a batch touches only the
rows in the batch. Nulls are sentinels inside the array rather than a separate
mask, so that the evaluator can compare the raw arrays directly:

    kind      array             null        frame() dtype
    text      int16/int32 code  -1          Categorical (codes index ``values``)
    number    float64           NaN         Float64
    flag      int8  0/1         -1          Boolean
    presence  bool              (none)      Boolean         has_email / has_phone / has_push
    time      int64 µs UTC      INT64_MIN   Datetime(us, UTC)
    count     uint32            (0)         UInt32          event.<name>.count

``raw()`` is a zero-copy polars view for evaluation; ``public()`` converts the
sentinels to real nulls for ``AudienceStore.frame()`` (a copy, built on demand).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import polars as pl

NULL_TIME = np.iinfo(np.int64).min
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$")


# What each criteria field reads: built-in user fields, attributes and event aggregates by column name.
BUILTIN_COLUMNS = {
    "country": "country", "language": "language", "timezone": "timezone",
    "email": "has_email", "phone": "has_phone", "push": "has_push", "created_at": "created_at",
}


def attribute_column(name: str) -> str:
    return f"attr.{name}"


def event_columns(name: str) -> tuple[str, str, str]:
    """The count, first and last time columns of event ``name``."""
    return f"event.{name}.count", f"event.{name}.first", f"event.{name}.last"


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch, UTC (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, tz=timezone.utc)


@lru_cache(maxsize=65_536)
def parse_time_text(text: str) -> int:
    """An ISO date or date-time string as µs UTC, or NULL_TIME when it is not one."""
    if not _ISO_DATE.match(text):
        return NULL_TIME
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return NULL_TIME
    return to_micros(parsed)


def infer_kind(value: Any) -> str | None:
    """The column kind an attribute gets from its first non-null value (None: not storable)."""
    if isinstance(value, bool):
        return "flag"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "time" if parse_time_text(value) != NULL_TIME else "text"
    return None  # lists and objects are not segmentable


class Column:
    kind: ClassVar[str]
    dtype: ClassVar[Any]
    null: ClassVar[Any]

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    @classmethod
    def empty(cls, capacity: int) -> Column:
        return cls(np.full(capacity, cls.null, dtype=cls.dtype))

    def grow(self, capacity: int, n: int) -> None:
        data = np.full(capacity, self.null, dtype=self.data.dtype)
        data[:n] = self.data[:n]
        self.data = data

    def permute(self, order: np.ndarray) -> None:
        n = len(order)
        self.data[:n] = self.data[:n][order]

    def take(self, keep: np.ndarray, n: int) -> None:
        """Keep only rows ``keep`` (ascending) of the first ``n``, moved to the front; the rest become null."""
        m = len(keep)
        self.data[:m] = self.data[:n][keep]
        self.data[m:n] = self.null

    def raw(self, name: str, n: int) -> pl.Series:
        return pl.Series(name, self.data[:n])

    def public(self, name: str, n: int) -> pl.Series:
        return self.raw(name, n)

    def set_null(self, rows: np.ndarray) -> None:
        self.data[rows] = self.null

    def set(self, rows: np.ndarray, values: list) -> None:
        self.data[rows] = self.encode(values)

    def encode(self, values: list) -> np.ndarray:
        raise NotImplementedError

    def has_values(self, n: int) -> bool:
        return bool(np.any(self.data[:n] != self.null))

    def meta(self) -> dict:
        return {"kind": self.kind}


class NumberColumn(Column):
    kind, dtype, null = "number", np.float64, np.nan

    def encode(self, values: list) -> np.ndarray:
        if set(map(type, values)) <= _NUMERIC_OR_NONE:  # the usual batch: numpy converts None to NaN
            try:
                out = np.array(values, dtype=np.float64)
            except OverflowError:
                out = self._encode_slowly(values)
        else:
            out = self._encode_slowly(values)
        out[~np.isfinite(out)] = math.nan
        return out

    @staticmethod
    def _encode_slowly(values: list) -> np.ndarray:
        return np.fromiter(
            (_finite(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in values),
            dtype=np.float64, count=len(values))

    def has_values(self, n: int) -> bool:
        return bool(np.any(~np.isnan(self.data[:n])))

    def public(self, name: str, n: int) -> pl.Series:
        return self.raw(name, n).fill_nan(None)


_NUMERIC_OR_NONE = {int, float, type(None)}


def _finite(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.nan


class FlagColumn(Column):
    kind, dtype, null = "flag", np.int8, -1

    def encode(self, values: list) -> np.ndarray:
        return np.fromiter((1 if v is True else 0 if v is False else -1 for v in values),
                           dtype=np.int8, count=len(values))

    def public(self, name: str, n: int) -> pl.Series:
        raw = self.raw(name, n)
        return pl.select(pl.when(raw >= 0).then(raw == 1).alias(name)).to_series()


class PresenceColumn(Column):
    kind, dtype, null = "presence", np.bool_, False

    def encode(self, values: list) -> np.ndarray:
        return np.array([bool(v) for v in values], dtype=np.bool_)


class CountColumn(Column):
    kind, dtype, null = "count", np.uint32, 0


class TimeColumn(Column):
    kind, dtype, null = "time", np.int64, NULL_TIME

    def encode(self, values: list) -> np.ndarray:
        return np.fromiter((_time_value(v) for v in values), dtype=np.int64, count=len(values))

    def public(self, name: str, n: int) -> pl.Series:
        raw = self.raw(name, n)
        return pl.select(pl.when(raw != NULL_TIME).then(raw).cast(pl.Datetime("us", "UTC")).alias(name)).to_series()


def _time_value(value: Any) -> int:
    if isinstance(value, str):
        return parse_time_text(value)
    if isinstance(value, datetime):
        return to_micros(value)
    if isinstance(value, date):
        return to_micros(datetime(value.year, value.month, value.day, tzinfo=timezone.utc))
    return NULL_TIME


class TextColumn(Column):
    """Dictionary-encoded text: codes in a narrow int array, distinct values in a list."""

    kind, dtype, null = "text", np.int16, -1

    def __init__(self, data: np.ndarray, values: list[str] | None = None) -> None:
        super().__init__(data)
        self.values: list[str] = list(values or [])
        self.codes: dict[str, int] = {v: i for i, v in enumerate(self.values)}
        self._lookup: dict = {None: -1, **self.codes}  # for the fast path of encode

    def grow(self, capacity: int, n: int) -> None:
        data = np.full(capacity, -1, dtype=self.data.dtype)
        data[:n] = self.data[:n]
        self.data = data

    def code(self, value: str) -> int | None:
        return self.codes.get(value)

    def encode(self, values: list) -> np.ndarray:
        try:  # the usual batch: only values seen before, or None, all looked up in C
            return np.fromiter(map(self._lookup.__getitem__, values), dtype=self.data.dtype, count=len(values))
        except (KeyError, TypeError):
            return self._encode_slowly(values)

    def _encode_slowly(self, values: list) -> np.ndarray:
        codes = self.codes
        out = []
        for v in values:
            if v is None or isinstance(v, bool) or not isinstance(v, (str, int, float)):
                out.append(-1)
                continue
            if not isinstance(v, str):
                v = str(v)
            code = codes.get(v)
            if code is None:
                code = codes[v] = self._lookup[v] = len(self.values)
                self.values.append(v)
            out.append(code)
        if len(self.values) > np.iinfo(self.data.dtype).max:  # widen once, when int16 runs out
            self.data = self.data.astype(np.int32)
        return np.asarray(out, dtype=self.data.dtype)

    def public(self, name: str, n: int) -> pl.Series:
        raw = self.raw(name, n)
        index = pl.select(pl.when(raw >= 0).then(raw).cast(pl.UInt32)).to_series()
        # Categorical: the codes are gathered, not the strings (10M users: 40 MB, not 200 MB).
        return pl.Series(name, self.values, dtype=pl.Categorical).gather(index).alias(name)

    def meta(self) -> dict:
        return {"kind": self.kind, "values": self.values}


KINDS: dict[str, type[Column]] = {
    cls.kind: cls for cls in (NumberColumn, FlagColumn, PresenceColumn, CountColumn, TimeColumn, TextColumn)
}


def column_from(meta: dict, data: np.ndarray) -> Column:
    """Rebuild a column from ``Column.meta()`` and its array (snapshots)."""
    cls = KINDS[meta["kind"]]
    return TextColumn(data, meta.get("values")) if cls is TextColumn else cls(data)

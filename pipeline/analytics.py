"""A campaign's analytics from its counters: metrics, rates, revenue, breakdowns and a time series. Pure.

The counters are the aggregate's (pipeline/metrics.py): the live totals per campaign, channel and variant,
and the same counts per minute and per hour, field ``<channel>:<variant>:<metric>``. Rates follow the spec's
formulas, in percent, rounded to two decimals, None where the denominator is 0:

    delivery    delivered / sent            open          opened / delivered
    click       clicked / delivered         click-to-open clicked / opened
    conversion  converted / delivered       unsubscribe   unsubscribed / delivered
    bounce      bounced / sent              complaint     complained / delivered
    ROI         (revenue - cost) / cost     (cost: what the sends spent, ``budget_spent``)

Opens are people's by default: machine opens (pipeline/engagement.py) are shown beside them and only
counted in the rates when asked (``opens="all"``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

COUNTED = ("sent", "delivered", "bounced", "failed", "opened", "machine_opened", "clicked", "converted",
           "unsubscribed", "complained", "suppressed")
MONEY = ("revenue", "budget_spent")
INTERVALS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_RANGE_DAYS = 366
MINUTE_RANGE_DAYS = 3  # minute counts are kept 3 days (pipeline.metrics.MINUTE_TTL_S)
MAX_POINTS = 10_000
NAMES = frozenset((*COUNTED, *MONEY))


def _zero() -> dict[str, float]:
    return {m: 0.0 for m in (*COUNTED, *MONEY)}


def number(value: Any) -> float:
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def counts(raw: Mapping[Any, Any]) -> dict[str, float]:
    """A counter hash as {metric: number} (only the metrics analytics shows)."""
    out = _zero()
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        if name in out:
            out[name] = number(value)
    return out


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def rates(m: Mapping[str, float], opens: str = "human") -> dict[str, float | None]:
    opened = m["opened"] + (m["machine_opened"] if opens == "all" else 0.0)
    cost = m["budget_spent"]
    return {
        "delivery_rate": _pct(m["delivered"], m["sent"]),
        "open_rate": _pct(opened, m["delivered"]),
        "click_rate": _pct(m["clicked"], m["delivered"]),
        "click_to_open_rate": _pct(m["clicked"], opened),
        "conversion_rate": _pct(m["converted"], m["delivered"]),
        "unsubscribe_rate": _pct(m["unsubscribed"], m["delivered"]),
        "bounce_rate": _pct(m["bounced"], m["sent"]),
        "complaint_rate": _pct(m["complained"], m["delivered"]),
        "roi": _pct(m["revenue"] - cost, cost),
    }


def view(m: Mapping[str, float], opens: str = "human") -> dict[str, Any]:
    """Metrics, rates, revenue and cost of one set of counts (a campaign, a channel, a variant, a bucket)."""
    return {
        "metrics": {k: int(m[k]) for k in COUNTED},
        "rates": rates(m, opens),
        "revenue": {"total": round(m["revenue"], 4),
                    "average_order_value": round(m["revenue"] / m["converted"], 4) if m["converted"] else None},
        "cost": round(m["budget_spent"], 6),
    }


def split_field(field: str) -> tuple[str, str, str] | None:
    """``<channel>:<variant>:<metric>`` of a minute or hour hash (a variant may itself hold colons)."""
    channel, _, rest = field.partition(":")
    variant, _, metric = rest.rpartition(":")
    return (channel, variant, metric) if channel and variant and metric else None


Cell = dict[tuple[str, str], dict[str, float]]


def fold_series(hashes: Iterable[Mapping[Any, Any]]) -> Cell:
    """Sum minute or hour hashes into {(channel, variant): counts}."""
    out: Cell = defaultdict(_zero)
    for raw in hashes:
        for key, value in raw.items():
            parts = split_field(key.decode() if isinstance(key, bytes) else key)
            if parts is None or parts[2] not in NAMES:
                continue
            out[(parts[0], parts[1])][parts[2]] += number(value)
    return dict(out)


def total(cells: Cell) -> dict[str, float]:
    out = _zero()
    for values in cells.values():
        for k, v in values.items():
            out[k] += v
    return out


def merge(many: Iterable[Cell]) -> Cell:
    """Cells of several minutes or hours summed per (channel, variant)."""
    out: Cell = defaultdict(_zero)
    for cells in many:
        for key, values in cells.items():
            into = out[key]
            for k, v in values.items():
                into[k] += v
    return dict(out)


def by(cells: Cell, index: int) -> dict[str, dict[str, float]]:
    """Cells summed by channel (``index`` 0) or variant (1)."""
    groups: dict[str, Cell] = defaultdict(dict)
    for key, values in cells.items():
        groups[key[index]][key] = values
    return {name: total(group) for name, group in groups.items()}


# ---------------------------------------------------------------- the query: range and interval


@dataclass(frozen=True, slots=True)
class Query:
    start: datetime  # inclusive
    end: datetime  # exclusive
    interval: str | None
    ranged: bool  # dates were given (else: the campaign's whole life, from the live totals)


def parse_query(start_date: str | None, end_date: str | None, interval: str | None, opens: str | None,
                born: datetime, now: datetime) -> tuple[Query | None, list[tuple[str, str]]]:
    """The query, or (None, [(field, why), ...]) for a 422. Dates are UTC days, both included."""
    problems: list[tuple[str, str]] = []
    days: dict[str, date] = {}
    for name, value in (("start_date", start_date), ("end_date", end_date)):
        if value is None:
            continue
        try:
            days[name] = date.fromisoformat(value)
        except ValueError:
            problems.append((name, "must be a date, YYYY-MM-DD"))
    if interval is not None and interval not in INTERVALS:
        problems.append(("interval", f"must be one of {', '.join(INTERVALS)}"))
    if opens is not None and opens not in ("human", "all"):
        problems.append(("opens", "must be human or all"))
    if problems:
        return None, problems
    first = days.get("start_date") or born.astimezone(timezone.utc).date()
    last = days.get("end_date") or now.astimezone(timezone.utc).date()
    if first > last:
        return None, [("end_date", "is before start_date")]
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        return None, [("end_date", f"the range is over {MAX_RANGE_DAYS} days")]
    start = datetime.combine(first, time(), timezone.utc)
    end = datetime.combine(last + timedelta(days=1), time(), timezone.utc)
    if interval == "minute" and (end - start).days > MINUTE_RANGE_DAYS:
        return None, [("interval", f"minute counts are kept {MINUTE_RANGE_DAYS} days: use hour or a shorter range")]
    return Query(start, end, interval, ranged=bool(days)), []


def span(query: Query, born: datetime, now: datetime, unit_s: int) -> list[int]:
    """The minutes or hours (since the epoch) to read: the query's range within the campaign's life."""
    first = max(query.start, born.astimezone(timezone.utc) - timedelta(hours=1))
    last = min(query.end, now + timedelta(minutes=1))
    if first >= last:
        return []
    lo, hi = int(first.timestamp() // unit_s), int((last.timestamp() - 1) // unit_s)
    if unit_s == 60:
        lo = max(lo, int((now - timedelta(days=MINUTE_RANGE_DAYS)).timestamp() // 60))
    return list(range(lo, hi + 1))


def series(per_unit: Mapping[int, Cell], unit_s: int, interval: str, opens: str) -> list[dict[str, Any]]:
    """Points of the time series, one per interval that has counts, in time order."""
    step = INTERVALS[interval]
    buckets: dict[int, list[Cell]] = defaultdict(list)
    for unit, cells in per_unit.items():
        buckets[unit * unit_s // step * step].append(cells)
    points = []
    for at in sorted(buckets)[:MAX_POINTS]:
        merged = total(merge(buckets[at]))
        if any(merged[m] for m in COUNTED):
            points.append({"at": datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z"),
                           **view(merged, opens)})
    return points

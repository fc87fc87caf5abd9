"""Segment engine benchmark: estimate and membership over a synthetic audience.

    python bench/segments.py --users 10000000 [--runs 7] [--seed 7] [--exclusion static|dynamic] [--lean]

Synthesizes a realistic store directly in columns (vectorized numpy, no Kafka):
built-in fields, eleven attributes shaped like ``scripts/demo.py`` and four
events with count/first/last, then times the segment

    plan = "pro"  AND  lifetime_value between 100 and 1000
    AND product_viewed in the last 7 days,   minus one excluded segment

(static: a 1% suppression list of user ids; dynamic: marketing_opt_in = false).
``--lean`` keeps only the built-ins, three attributes and two events, so that
100M users fit in memory beside everything else on the machine.

Then applies batches of 10,000 profiles (updates, plus 10% new users) and of
10,000 events to the big store, to show a batch costs O(batch), not O(users).

Prints one JSON line: {"users", "estimate_s", "materialize_s", "peak_rss_mb", ...}
(peak_rss_mb: the whole run, growth included; query_rss_mb: before the batches)
with the medians of ``--runs`` runs; the evaluator's cached frame is dropped
before each run, as after an applied batch.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.segments import AudienceStore, parse_criteria  # noqa: E402
from pipeline.segments.columns import NULL_TIME, to_micros  # noqa: E402

DAY_US = 86_400 * 1_000_000
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)

COUNTRIES = ["US", "GB", "DE", "FR", "BR", "IN", "JP", "CA", "AU", "ES", "IT", "MX", "NL", "SE", "PL"]
COUNTRY_SHARE = [30, 8, 8, 6, 8, 10, 5, 4, 3, 4, 4, 4, 2, 2, 2]
LANGUAGES = ["en", "de", "fr", "pt-BR", "hi", "ja", "es", "it", "nl", "sv", "pl", "es-US"]
PLANS, PLAN_SHARE = ["free", "basic", "pro", "enterprise"], [55, 25, 15, 5]
PLATFORMS, PLATFORM_SHARE = ["ios", "android", "web"], [40, 35, 25]
CHANNELS = ["organic", "paid_search", "social", "referral", "email", "affiliate"]
EVENTS = {"session_start": 0.7, "product_viewed": 0.6, "add_to_cart": 0.3, "purchase": 0.15}


def _pick(rng: np.random.Generator, n: int, shares: list[float], dtype=np.int16) -> np.ndarray:
    p = np.asarray(shares, dtype=np.float64)
    return rng.choice(len(p), size=n, p=p / p.sum()).astype(dtype)


def _text(codes: np.ndarray, values: list[str], null_share: float = 0.0,
          rng: np.random.Generator | None = None) -> tuple[dict, np.ndarray]:
    if null_share and rng is not None:
        codes[rng.random(len(codes)) < null_share] = -1
    return {"kind": "text", "values": values}, codes


def synthesize(users: int, seed: int, lean: bool = False) -> AudienceStore:
    """A store of ``users`` users in user_id order, built column by column."""
    rng = np.random.default_rng(seed)
    now = to_micros(NOW)
    n = users
    columns: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {"user_id": np.arange(1, n + 1, dtype=np.int64)}

    def add(name: str, meta: dict, data: np.ndarray) -> None:
        columns[name] = meta
        arrays[name] = data

    add("country", *_text(_pick(rng, n, COUNTRY_SHARE), COUNTRIES, 0.01, rng))
    add("language", *_text(_pick(rng, n, [40, 8, 6, 8, 6, 5, 10, 4, 2, 2, 2, 7]), LANGUAGES))
    add("timezone", *_text(rng.integers(0, 60, n, dtype=np.int16), [f"Zone/{i}" for i in range(60)]))
    add("has_email", {"kind": "presence"}, rng.random(n) < 0.98)
    add("has_phone", {"kind": "presence"}, rng.random(n) < 0.8)
    add("has_push", {"kind": "presence"}, rng.random(n) < 0.5)
    tenure = (rng.random(n) ** 1.4 * 3 * 365 * DAY_US).astype(np.int64)
    created = now - tenure
    add("created_at", {"kind": "time"}, created)
    if not lean:
        add("attr.signup_date", {"kind": "time"}, created - created % DAY_US)
    add("attr.plan", *_text(_pick(rng, n, PLAN_SHARE), PLANS))
    buyers = rng.random(n) < 0.45
    purchases = np.where(buyers, rng.poisson(4.0, n) + 1, 0).astype(np.float64)
    add("attr.lifetime_value", {"kind": "number"},
        np.round(purchases * rng.lognormal(np.log(55), 0.6, n), 2))
    add("attr.marketing_opt_in", {"kind": "flag"}, (rng.random(n) < 0.62).astype(np.int8))
    if not lean:
        add("attr.platform", *_text(_pick(rng, n, PLATFORM_SHARE), PLATFORMS))
        add("attr.age", {"kind": "number"}, np.rint(rng.triangular(18, 31, 75, n)))
        add("attr.purchase_count", {"kind": "number"}, purchases)
        last_purchase = created + (rng.random(n) * tenure).astype(np.int64)
        add("attr.last_purchase_date", {"kind": "time"},
            np.where(buyers, last_purchase - last_purchase % DAY_US, NULL_TIME))
        add("attr.acquisition_channel", *_text(_pick(rng, n, [40, 20, 15, 10, 10, 5]), CHANNELS))
        add("attr.city", *_text(rng.integers(0, 300, n, dtype=np.int16), [f"City {i}" for i in range(300)]))
        del last_purchase
    del tenure, created, buyers, purchases
    events = {k: v for k, v in EVENTS.items() if not lean or k in ("product_viewed", "purchase")}
    for event, share in events.items():
        active = rng.random(n) < share
        count = np.where(active, rng.geometric(0.08, n), 0).astype(np.uint32)
        last = np.where(active, now - (rng.exponential(12.0, n) * DAY_US).astype(np.int64), NULL_TIME)
        first = np.where(active, last - (rng.random(n) * 80 * DAY_US).astype(np.int64), NULL_TIME)
        add(f"event.{event}.count", {"kind": "count"}, count)
        add(f"event.{event}.first", {"kind": "time"}, first)
        add(f"event.{event}.last", {"kind": "time"}, last)
        del active, count, first, last
    arrays["_profile_time"] = np.full(n, now, dtype=np.int64)
    arrays["_tail_keys"] = arrays["_tail_rows"] = np.empty(0, dtype=np.int64)
    meta = {
        "users": n, "sorted": n, "newest": now, "columns": columns, "offsets": {},
        "attributes": {name.removeprefix("attr."): m["kind"] for name, m in columns.items()
                       if name.startswith("attr.")},
        "events": list(events),
    }
    return AudienceStore.from_state(meta, arrays)


def _median_time(fn, runs: int, store: AudienceStore) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        store._raw = None  # as after an applied batch: the zero-copy frame is rebuilt
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _apply_batches(store: AudienceStore, users: int, runs: int, seed: int) -> tuple[float, float]:
    """Median seconds to apply 10,000 profiles (10% new users) and 10,000 events."""
    from schemas.records import UserEvent, UserProfile

    rng = np.random.default_rng(seed + 2)
    profile_times, event_times = [], []
    next_id = users + 1
    for run in range(runs):
        known = rng.integers(1, users + 1, 9_000)
        new = np.arange(next_id, next_id + 1_000)
        next_id += 1_000
        updated = NOW.replace(minute=run + 1)
        profiles = [UserProfile(user_id=int(uid), country="US", email="a@b.co", updated_at=updated,
                                attributes={"plan": PLANS[uid % 4], "lifetime_value": float(uid % 500),
                                            "marketing_opt_in": bool(uid % 2)})
                    for uid in np.concatenate([known, new])]
        events = [UserEvent(user_id=int(uid), name="product_viewed", occurred_at=updated)
                  for uid in rng.integers(1, next_id, 10_000)]
        start = time.perf_counter()
        store.apply_profiles(profiles)
        profile_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.apply_events(events)
        event_times.append(time.perf_counter() - start)
    return statistics.median(profile_times), statistics.median(event_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--exclusion", choices=("static", "dynamic"), default="static")
    parser.add_argument("--lean", action="store_true", help="fewer columns (for 100M users)")
    args = parser.parse_args()

    started = time.perf_counter()
    store = synthesize(args.users, args.seed, args.lean)
    gc.collect()
    build_s = time.perf_counter() - started

    criteria = parse_criteria({
        "conditions": [
            {"field": "plan", "operator": "equals", "value": "pro"},
            {"field": "lifetime_value", "operator": "between", "value": [100, 1000]},
            {"field": "events.product_viewed", "operator": "exists", "value": "last_7_days"},
        ],
        "logic": "AND",
        "exclude_segments": [1],
    }, store)
    if args.exclusion == "static":
        rng = np.random.default_rng(args.seed + 1)
        excluded = np.unique(rng.integers(1, args.users + 1, max(1, args.users // 100)))
    else:
        excluded = parse_criteria(
            {"conditions": [{"field": "marketing_opt_in", "operator": "equals", "value": False}]}, store)
    exclusions = {1: excluded}

    estimate_s, size = _median_time(lambda: store.estimate(criteria, exclusions, now=NOW), args.runs, store)
    materialize_s, members = _median_time(lambda: store.members(criteria, exclusions, now=NOW), args.runs, store)
    assert len(members) == size and bool(np.all(np.diff(members) > 0))  # type: ignore[arg-type]
    query_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The first batch of new users grows every column by 25% (one copy, column by column).
    apply_profiles_s, apply_events_s = _apply_batches(store, args.users, args.runs, args.seed)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(orjson.dumps({
        "users": args.users, "estimate_s": round(estimate_s, 4), "materialize_s": round(materialize_s, 4),
        "peak_rss_mb": round(peak_rss_mb), "query_rss_mb": round(query_rss_mb), "segment_size": size, "exclusion": args.exclusion,
        "apply_10k_profiles_s": round(apply_profiles_s, 4), "apply_10k_events_s": round(apply_events_s, 4),
        "build_s": round(build_s, 1), "runs": args.runs, "lean": args.lean,
    }).decode())


if __name__ == "__main__":
    main()

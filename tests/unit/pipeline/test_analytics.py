"""pipeline.analytics: rates by the spec's formulas, breakdowns, ranges and the time series."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pipeline import analytics as an

NOW = datetime(2026, 12, 5, 12, 30, tzinfo=timezone.utc)
BORN = NOW - timedelta(days=2)


def m(**values: float) -> dict[str, float]:
    return {**an._zero(), **values}


def test_rates_follow_the_spec_formulas_and_count_people_s_opens_by_default():
    counts = m(sent=1000, delivered=980, bounced=20, opened=300, machine_opened=100, clicked=60, converted=12,
               unsubscribed=2, revenue=600.0, budget_spent=150.0)
    r = an.rates(counts)
    assert r["delivery_rate"] == 98.0 and r["bounce_rate"] == 2.0
    assert r["open_rate"] == round(100 * 300 / 980, 2) and r["click_to_open_rate"] == 20.0
    assert r["click_rate"] == round(100 * 60 / 980, 2) and r["conversion_rate"] == round(100 * 12 / 980, 2)
    assert r["unsubscribe_rate"] == round(100 * 2 / 980, 2) and r["roi"] == 300.0
    assert an.rates(counts, "all")["open_rate"] == round(100 * 400 / 980, 2)
    view = an.view(counts)
    assert view["revenue"] == {"total": 600.0, "average_order_value": 50.0}
    assert view["metrics"]["machine_opened"] == 100 and view["cost"] == 150.0


def test_rates_without_a_denominator_are_none():
    assert set(an.rates(m()).values()) == {None}
    assert an.view(m())["revenue"]["average_order_value"] is None


def test_series_fields_sum_by_channel_and_variant():
    cells = an.fold_series([{b"email:A:sent": b"3", b"email:B:sent": b"2", b"sms:-:sent": b"1", b"email:A:revenue": b"9.5"},
                            {"email:A:sent": "1", "email:x:y:opened": "4", "bogus": "1", "email:A:mystery": "7"}])
    assert cells[("email", "A")]["sent"] == 4 and cells[("email", "A")]["revenue"] == 9.5
    assert cells[("email", "x:y")]["opened"] == 4  # a variant id with colons
    assert an.by(cells, 0)["email"]["sent"] == 6 and an.by(cells, 1)["-"]["sent"] == 1
    assert an.total(cells)["sent"] == 7


def test_queries_are_checked_and_bounded():
    q, problems = an.parse_query("2026-12-01", "2026-12-04", "hour", None, BORN, NOW)
    assert problems == [] and q.ranged and q.start.day == 1 and q.end.day == 5
    for args, field in [(("2026-12-04", "2026-12-01", None, None), "end_date"),
                        (("2025-01-01", "2026-12-04", None, None), "end_date"),
                        (("yesterday", None, None, None), "start_date"),
                        ((None, None, "week", None), "interval"),
                        ((None, None, None, "bots"), "opens"),
                        (("2026-11-01", "2026-12-04", "minute", None), "interval")]:
        query, problems = an.parse_query(*args, BORN, NOW)
        assert query is None and problems[0][0] == field, (args, problems)
    whole, _ = an.parse_query(None, None, None, None, BORN, NOW)
    assert not whole.ranged


def test_the_span_reads_only_the_campaign_s_life_and_the_series_buckets_by_interval():
    q, _ = an.parse_query("2026-01-01", "2026-12-31", "hour", None, BORN, NOW)
    hours = an.span(q, BORN, NOW, 3600)
    assert hours[0] == int((BORN - timedelta(hours=1)).timestamp() // 3600) and len(hours) < 60
    h0 = int(NOW.timestamp() // 3600) - 1
    per_hour = {h0: {("email", "A"): m(sent=5, delivered=4)}, h0 + 1: {("email", "A"): m(sent=1)},
                h0 - 30: {("email", "A"): m()}}
    points = an.series(per_hour, 3600, "hour", "human")
    assert [p["metrics"]["sent"] for p in points] == [5, 1]  # an hour without counts is not a point
    [day] = an.series(per_hour, 3600, "day", "human")
    assert day["metrics"]["sent"] == 6 and day["at"] == "2026-12-05T00:00:00Z"

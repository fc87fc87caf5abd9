"""pipeline.dashboard: the realtime figures from the per-minute and per-day counters."""

from __future__ import annotations

from datetime import datetime, timezone

from pipeline import dashboard

NOW = datetime(2026, 12, 5, 12, 30, 30, tzinfo=timezone.utc)
MINUTE = int(NOW.timestamp() // 60)


def test_the_realtime_figures_add_channels_and_rank_campaigns():
    today = {b"email:queued": b"120", b"email:sent": b"100", b"email:failed": b"5", b"sms:queued": b"10",
             b"sms:sent": b"10", b"email:opened": b"30", b"nonsense": b"1"}
    minutes = [(MINUTE - 2, {b"email:sent": b"30"}), (MINUTE - 1, {b"email:sent": b"60", b"sms:sent": b"6"}),
               (MINUTE, {b"email:sent": b"15", b"email:delivered": b"10"})]
    live = {7: {b"sent": b"80", b"delivered": b"78", b"opened": b"30", b"converted": b"3", b"revenue": b"90"}}
    out = dashboard.realtime(NOW, 4, today, minutes, [(7, 80.0), (9, 30.0)],
                             {7: {"name": "Winter sale", "status": "active", "channels": ["email"]}}, live)
    assert (out["active_campaigns"], out["messages_sent_today"], out["messages_sending_now"]) == (4, 110, 15)
    assert out["current_qps"] == round((60 + 6 + 15) / 90.0, 2)  # the last complete minute and this one's 30 s
    assert out["channels"]["email"]["opened"] == 30 and out["channels"]["sms"]["sent"] == 10
    assert [p["sent"] for p in out["sent_per_minute"]] == [30, 66, 15]
    assert out["sent_per_minute"][-1]["at"] == "2026-12-05T12:30:00Z"
    [first] = out["top_campaigns"]  # campaign 9 was deleted since
    assert (first["campaign_id"], first["name"], first["sent_today"]) == (7, "Winter sale", 80)
    assert first["rates"]["delivery_rate"] == 97.5 and first["revenue"]["average_order_value"] == 30.0


def test_nothing_sent_reads_as_zeros():
    out = dashboard.realtime(NOW, 0, {}, [], [], {}, {})
    assert out["messages_sent_today"] == 0 and out["current_qps"] == 0 and out["top_campaigns"] == []

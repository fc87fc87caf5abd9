"""The realtime dashboard's figures from the aggregate's counters. Pure.

The aggregate's fold (pipeline/aggregate_io.py) also counts every campaign's messages per minute and per UTC
day (``<channel>:<metric>`` fields) and ranks campaigns by messages sent per day. From those:

    messages_sent_today     sent today, every channel
    messages_sending_now    released by the gate today and not yet sent, failed, cancelled or expired
    current_qps             sent over the last complete minute and the current one, per second
    sent_per_minute         the last ``MINUTES`` minutes (sent, delivered, opened, clicked): the rate chart
    top_campaigns           the campaigns that sent most today (and still exist), with their live totals
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from pipeline import analytics

MINUTES = 60
TOP = 10
CHART = ("sent", "delivered", "opened", "clicked")
IN_FLIGHT_DONE = ("sent", "failed", "cancelled", "expired", "bounced")


def by_channel(raw: Mapping[Any, Any]) -> dict[str, dict[str, int]]:
    """A ``<channel>:<metric>`` hash as {channel: {metric: count}}."""
    out: dict[str, dict[str, int]] = {}
    for key, value in raw.items():
        field = key.decode() if isinstance(key, bytes) else key
        channel, _, metric = field.partition(":")
        if channel and metric:
            out.setdefault(channel, {})[metric] = int(analytics.number(value))
    return out


def summed(channels: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for metrics in channels.values():
        for k, v in metrics.items():
            out[k] = out.get(k, 0) + v
    return out


def realtime(now: datetime, active_campaigns: int, today: Mapping[Any, Any], minutes: Iterable[tuple[int, Mapping]],
             top: list[tuple[int, float]], campaigns: Mapping[int, Mapping[str, Any]],
             live: Mapping[int, Mapping[Any, Any]]) -> dict[str, Any]:
    """The dashboard's answer. ``minutes``: (minute since the epoch, its hash) for the last ``MINUTES`` minutes,
    oldest first, the current one last; ``top``: (campaign id, sent today); ``campaigns``: their rows
    (name, status, channels); ``live``: their live totals."""
    channels = by_channel(today)
    totals = summed(channels)
    series = [(minute, summed(by_channel(raw))) for minute, raw in minutes]
    current_minute = int(now.timestamp() // 60)
    into_minute = now.timestamp() - current_minute * 60
    recent = [m for minute, m in series if minute >= current_minute - 1]
    sent_recent = sum(m.get("sent", 0) for m in recent)
    in_flight = totals.get("queued", 0) - sum(totals.get(k, 0) for k in IN_FLIGHT_DONE if k != "bounced")
    return {
        "at": now.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "active_campaigns": active_campaigns,
        "messages_sent_today": totals.get("sent", 0),
        "messages_sending_now": max(0, in_flight),
        "current_qps": round(sent_recent / (60.0 + into_minute), 2),
        "today": {k: totals.get(k, 0) for k in analytics.COUNTED},
        "channels": {ch: {k: m.get(k, 0) for k in analytics.COUNTED} for ch, m in sorted(channels.items())},
        "sent_per_minute": [{"at": datetime.fromtimestamp(minute * 60, timezone.utc).isoformat().replace("+00:00", "Z"),
                             **{k: m.get(k, 0) for k in CHART}} for minute, m in series],
        "top_campaigns": [
            {"campaign_id": cid, "name": campaigns.get(cid, {}).get("name"), "status": campaigns.get(cid, {}).get("status"),
             "channels": list(campaigns.get(cid, {}).get("channels") or []), "sent_today": int(sent),
             **analytics.view(analytics.counts(live.get(cid, {})))}
            for cid, sent in top if cid in campaigns  # a campaign deleted since is not shown
        ][:TOP],
    }

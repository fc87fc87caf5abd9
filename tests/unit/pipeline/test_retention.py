"""Retention rules: the tables' TTL from the settings, which tables need altering, the audit cutoff, and topics
that keep no record longer than the tables keep its row."""

from __future__ import annotations

from datetime import datetime, timezone

from config import Settings
from pipeline.retention import RETAINED_TABLES, audit_cutoff, row_ttl_s, tables_to_alter
from schemas.topics import DELIVERY_EVENTS, USER_EVENTS


def test_rows_live_the_configured_days_30_by_default():
    assert row_ttl_s(Settings()) == 30 * 86_400
    assert row_ttl_s(Settings(retention_days=90)) == 90 * 86_400


def test_only_tables_without_the_configured_ttl_are_altered():
    settings = Settings(retention_days=30)
    assert tables_to_alter(settings, {"message_log": 0, "user_events": 30 * 86_400}) == ["message_log"]
    assert tables_to_alter(settings, {t: 30 * 86_400 for t in RETAINED_TABLES}) == []
    assert tables_to_alter(settings, {}) == list(RETAINED_TABLES)


def test_audit_rows_older_than_the_retention_are_past_it():
    now = datetime(2026, 12, 5, tzinfo=timezone.utc)
    assert audit_cutoff(Settings(audit_retention_days=400), now) == datetime(2025, 10, 31, tzinfo=timezone.utc)


def test_the_event_topics_keep_nothing_longer_than_the_tables():
    ttl_ms = row_ttl_s(Settings()) * 1000
    assert 0 < USER_EVENTS.retention_ms <= ttl_ms and 0 < DELIVERY_EVENTS.retention_ms <= ttl_ms
    assert USER_EVENTS.config["retention.ms"] == str(USER_EVENTS.retention_ms)

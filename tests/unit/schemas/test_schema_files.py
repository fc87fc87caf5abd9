from datetime import datetime, timezone

from pipeline.stores.postgres import latest_per_user
from scripts.migrate import cql_statements
from schemas.records import UserProfile


def test_cql_statements_are_split_and_name_the_keyspace():
    statements = cql_statements("hk")
    assert statements[0].startswith("CREATE KEYSPACE IF NOT EXISTS hk")
    assert all("--" not in s for s in statements)
    tables = [s.split("hk.")[1].split()[0] for s in statements[1:]]
    assert tables == ["message_log", "user_events", "campaign_metrics", "message_log_by_user"]


def test_message_log_partitions_are_bounded_by_day_and_shard():
    message_log = next(s for s in cql_statements("hk") if "hk.message_log" in s)
    assert "PRIMARY KEY ((campaign_id, day, shard)" in message_log


def test_latest_per_user_keeps_the_newest_profile_of_each_user():
    t = lambda day: datetime(2026, 11, day, tzinfo=timezone.utc)
    profiles = [UserProfile(user_id=1, first_name="b", updated_at=t(2)),
                UserProfile(user_id=1, first_name="a", updated_at=t(1)),
                UserProfile(user_id=2, first_name="c", updated_at=t(1))]
    assert {p.user_id: p.first_name for p in latest_per_user(profiles)} == {1: "b", 2: "c"}

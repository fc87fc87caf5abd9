"""The erasure's pure decisions (pipeline/erase.py)."""

from datetime import date, datetime, timedelta, timezone

from pipeline import erase

KEY = erase.marker_key(b"0123456789abcdef0123456789abcdef")
AT = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def test_user_marker_is_keyed_and_stable():
    assert erase.user_marker(KEY, 42) == erase.user_marker(KEY, 42)
    assert erase.user_marker(KEY, 42) != erase.user_marker(KEY, 43)
    assert erase.user_marker(KEY, 42) != erase.user_marker(erase.marker_key(b"another key of 16+ bytes"), 42)
    assert b"42" not in erase.user_marker(KEY, 42)


def test_address_hash_ignores_case_and_spaces_but_not_the_address():
    assert erase.address_hash(KEY, " Ann@Example.com ") == erase.address_hash(KEY, "ann@example.com")
    assert erase.address_hash(KEY, "ann@example.com") != erase.address_hash(KEY, "bob@example.com")


def test_a_done_store_stays_done_and_all_done_needs_every_store():
    states = erase.initial_states()
    assert set(states) == set(erase.STORES) and not erase.all_done(states)
    states = erase.settle(states, {s: erase.DONE for s in erase.API_STORES})
    assert not erase.all_done(states)
    states = erase.settle(states, {"redis": "failed: ConnectionError", "faust_tables": erase.DONE})
    assert states["redis"] == erase.DONE
    assert erase.all_done(states)


def test_failed_store_keeps_the_erasure_open_until_retried():
    states = erase.settle(erase.initial_states(), {s: erase.DONE for s in erase.STORES if s != "redis"})
    states = erase.settle(states, {"redis": "failed: TimeoutError"})
    assert not erase.all_done(states)
    assert erase.all_done(erase.settle(states, {"redis": erase.DONE}))


def test_only_a_profile_created_after_the_erasure_is_a_new_signup():
    assert erase.is_new_signup(AT + timedelta(seconds=1), AT)
    assert not erase.is_new_signup(AT - timedelta(days=30), AT)
    assert not erase.is_new_signup(None, AT)
    assert erase.is_new_signup((AT + timedelta(hours=1)).replace(tzinfo=None), AT)  # naive is UTC


def test_screen_erased_drops_old_records_and_keeps_signups_and_others():
    markers = {7: AT}
    keep, signups = erase.screen_erased(
        [(7, AT - timedelta(days=1)), (8, None), (7, None), (7, AT + timedelta(minutes=5))], markers)
    assert keep == [False, True, False, True]
    assert signups == {7}


def test_months_back_covers_the_lookback_month_by_month():
    assert erase.months_back(date(2026, 3, 15), 60) == ["2026-03", "2026-02", "2026-01"]
    months = erase.months_back(date(2026, 12, 5), 400)
    assert months[0] == "2026-12" and months[-1] == "2025-10" and len(months) == len(set(months)) == 15


def test_without_user_removes_only_that_user_and_empties_to_a_tombstone():
    bucket = {"1": {"off": []}, "2": {"off": ["sms"]}}
    assert erase.without_user(bucket, 1) == {"2": {"off": ["sms"]}}
    assert erase.without_user({"1": {}}, 1) == {}
    assert erase.without_user(bucket, 3) is None
    assert erase.without_user(None, 1) is None


def test_log_index_rows_name_each_users_campaign_day_once():
    day = date(2026, 12, 5)
    rows = [(10, day, 5, AT, "m1", 517, "email"), (10, day, 5, AT, "m2", 517, "email"), (11, day, 3, AT, "m3", 3, "sms")]
    assert erase.log_index_rows(rows) == [(0, 3, 11, day), (1, 517, 10, day)]

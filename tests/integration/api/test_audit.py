"""GET /api/v1/audit against the real API and PostgreSQL: filters, pages, roles, bad queries."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.helpers.api import assert_error, bearer

AUDIT = "/api/v1/audit"


@pytest.fixture
async def changed_user(client, issue_key, make_user):  # noqa: F811
    """A user with three audited changes: two PATCHes by a marketer key, then an unsubscribe link."""
    from pipeline.signing import signing_key
    from pipeline.unsubscribe import make_unsubscribe_token

    marketer = issue_key("marketer")
    user_id = await make_user()
    url = f"/api/v1/users/{user_id}/preferences"
    for body in ({"frequency_cap": {"email": 3}}, {"categories": {"newsletters": False}}):
        assert client.patch(url, headers=bearer(marketer["key"]), json=body).status_code == 200
    token = make_unsubscribe_token(signing_key(client.app.state.settings), user_id, "sms", 5)
    assert client.post("/api/v1/unsubscribe", json={"token": token}).status_code == 200
    return user_id, marketer


def entries(client, key: str, **params) -> dict:
    response = client.get(AUDIT, headers=bearer(key), params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_entity_filter_returns_that_entitys_changes_newest_first(client, admin_key, changed_user):
    user_id, marketer = changed_user
    page = entries(client, admin_key, entity_type="user_preferences", entity_id=str(user_id))

    rows = page["entries"]
    assert [r["action"] for r in rows] == ["preferences.unsubscribed", "preferences.updated", "preferences.updated"]
    assert [r["actor"] for r in rows] == ["unsubscribe-link", marketer["name"], marketer["name"]]
    assert [r["actor_key_id"] for r in rows] == [None, marketer["key_id"], marketer["key_id"]]
    assert rows[0]["audit_id"] > rows[1]["audit_id"] > rows[2]["audit_id"]
    assert rows[2]["before"]["frequency_cap"] == {} and rows[2]["after"]["frequency_cap"] == {"email": 3}
    assert rows[0]["before"]["sms_enabled"] is True and rows[0]["after"]["sms_enabled"] is False
    assert set(rows[0]) == {"audit_id", "actor", "actor_key_id", "action", "entity_type", "entity_id", "before",
                            "after", "occurred_at"}
    assert page["next_cursor"] is None


async def test_actor_and_action_filters_combine(client, admin_key, changed_user):
    user_id, marketer = changed_user
    by_marketer = entries(client, admin_key, actor=marketer["name"])["entries"]
    unsubscribed = entries(client, admin_key, action="preferences.unsubscribed", entity_id=str(user_id))["entries"]

    assert len(by_marketer) == 2 and {r["entity_id"] for r in by_marketer} == {str(user_id)}
    assert [r["actor"] for r in unsubscribed] == ["unsubscribe-link"]


async def test_time_window_is_since_inclusive_until_exclusive(client, admin_key, changed_user):
    user_id, _ = changed_user
    rows = entries(client, admin_key, entity_id=str(user_id))["entries"]
    newest = datetime.fromisoformat(rows[0]["occurred_at"])
    oldest = datetime.fromisoformat(rows[-1]["occurred_at"])

    assert len(entries(client, admin_key, entity_id=str(user_id), since=oldest.isoformat())["entries"]) == 3
    assert entries(client, admin_key, entity_id=str(user_id), until=oldest.isoformat())["entries"] == []
    after_all = (newest + timedelta(microseconds=1)).isoformat()
    assert entries(client, admin_key, entity_id=str(user_id), since=after_all)["entries"] == []
    assert len(entries(client, admin_key, entity_id=str(user_id), until=after_all)["entries"]) == 3


async def test_cursor_pages_through_every_entry_once(client, admin_key, changed_user):
    user_id, _ = changed_user
    seen, cursor = [], None
    while True:
        params = {"entity_id": str(user_id), "limit": 1} | ({"cursor": cursor} if cursor else {})
        page = entries(client, admin_key, **params)
        seen += [r["audit_id"] for r in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = [r["audit_id"] for r in entries(client, admin_key, entity_id=str(user_id))["entries"]]
    assert seen == everything and len(seen) == 3


async def test_analyst_reads_marketer_is_403_and_no_key_is_401(client, issue_key):
    assert client.get(AUDIT, headers=bearer(issue_key("analyst")["key"]), params={"limit": 1}).status_code == 200
    assert_error(client.get(AUDIT, headers=bearer(issue_key("marketer")["key"])), 403, "forbidden")
    assert_error(client.get(AUDIT), 401, "unauthorized")


@pytest.mark.parametrize(
    "params, field",
    [
        ({"since": "yesterday"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"entity": "campaign"}, "entity"),
        ([("actor", "a"), ("actor", "b")], "actor"),
    ],
)
async def test_bad_query_is_422_naming_the_parameter(client, admin_key, params, field):
    error = assert_error(client.get(AUDIT, headers=bearer(admin_key), params=params), 422, "validation_error")
    assert [f["field"] for f in error["fields"]] == [field]

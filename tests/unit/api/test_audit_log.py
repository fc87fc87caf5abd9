"""The audit listing's filters become one parameterised WHERE clause."""

from __future__ import annotations

from datetime import datetime, timezone

import pydantic
import pytest

from api.audit_log import AuditQuery, where_clause


def test_no_filters_no_where():
    assert where_clause(AuditQuery()) == ("", [])


def test_every_filter_is_a_numbered_parameter_never_inlined():
    since = datetime(2026, 11, 1, tzinfo=timezone.utc)
    query = AuditQuery(entity_type="campaign", entity_id="42'; DROP TABLE audit_log; --", actor="ada",
                       action="campaign.launched", since=since, until=since, cursor="99")
    sql, args = where_clause(query)
    assert sql == (" WHERE entity_type = $1 AND entity_id = $2 AND actor = $3 AND action = $4"
                   " AND occurred_at >= $5 AND occurred_at < $6 AND audit_id < $7")
    assert args == ["campaign", "42'; DROP TABLE audit_log; --", "ada", "campaign.launched", since, since, 99]


def test_naive_times_are_read_as_utc():
    assert AuditQuery(since="2026-11-01T00:00:00").since == datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("params", [{"cursor": "0"}, {"cursor": "-1"}, {"cursor": "1" * 20}, {"limit": 0},
                                    {"sort": "asc"}])
def test_bad_parameters_are_refused(params):
    with pytest.raises(pydantic.ValidationError):
        AuditQuery.model_validate(params)

"""Segments: the criteria DSL and the columnar audience store that evaluates it.

One module for the API (estimates) and the launch stage (membership), so that
an estimate and the audience a launch reaches agree:

    criteria = parse_criteria(body["criteria"], store)      # CriteriaError -> 422
    unseen_fields(criteria, store)                           # attributes/events no user has yet: warnings
    store.estimate(criteria, exclusions)                     # int
    store.members(criteria, exclusions)                      # sorted int64 user ids

``open_audience(settings)`` gives a process its live store: the newest snapshot
plus the tail of ``user-profiles`` and ``user-events``.
"""

from pipeline.segments.dsl import (
    Condition, Criteria, CriteriaError, FieldCatalog, Group, parse_criteria, unseen_fields,
)
from pipeline.segments.live import open_audience
from pipeline.segments.compile import Exclusions
from pipeline.segments.store import AudienceStore

__all__ = [
    "AudienceStore", "Condition", "Criteria", "CriteriaError", "Exclusions", "FieldCatalog", "Group",
    "open_audience", "parse_criteria", "unseen_fields",
]

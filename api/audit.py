"""The audit trail, as the API writes it: ``record(conn, caller, action, entity_type, entity_id, before, after)``.

One writer for the whole of Herald, ``pipeline.audit.record`` (the stages write through it too);
every API mutation calls it on the connection of its own transaction.
"""

from __future__ import annotations

from pipeline.audit import record

__all__ = ["record"]

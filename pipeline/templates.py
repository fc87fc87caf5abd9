"""Templates: the public face of ``pipeline.content``, the one module the API and the senders import.

    compiled = CompiledTemplate(TemplateContent.from_record(await get_template(conn, 42)))
    rendered = compiled.render(message_variables(profile, campaign_variables), language="fr", variant="B")
    rendered.parts  # {"subject": ..., "html": ..., "text": ...}

Compile once per template (``compiled_template`` caches by id and update time),
render per message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from pipeline.content.analysis import campaign_variables, template_syntax_problems, unresolved_variables, variables_used
from pipeline.content.limits import LimitReport, SmsCount, check_limits, sms_count, sms_encoding
from pipeline.content.model import (
    CHANNELS,
    PART_KINDS,
    REQUIRED_PARTS,
    SAMPLE_PROFILE,
    SYSTEM_VARIABLES,
    TABLE_FIELDS,
    USER_FIELDS,
    CompiledTemplate,
    Rendered,
    RenderError,
    TemplateContent,
    estimate_parts,
    html_to_text,
    language_chain,
    message_variables,
    missing_parts,
    resolve_parts,
    user_variables,
    versions,
)
from pipeline.content.store import get_template, template_record

_compiled: OrderedDict[tuple[Any, Any], CompiledTemplate] = OrderedDict()
_MAX_COMPILED = 1024


def compiled_template(record: Mapping[str, Any]) -> CompiledTemplate:
    """The compiled form of a stored template, reused while its ``updated_at`` is unchanged."""
    key = (record.get("template_id"), record.get("updated_at"))
    found = _compiled.get(key) if key[0] is not None else None
    if found is None:
        found = CompiledTemplate(TemplateContent.from_record(record))
        if key[0] is not None:
            _compiled[key] = found
            if len(_compiled) > _MAX_COMPILED:
                _compiled.popitem(last=False)
    return found


__all__ = [
    "CHANNELS", "PART_KINDS", "REQUIRED_PARTS", "SAMPLE_PROFILE", "SYSTEM_VARIABLES", "TABLE_FIELDS",
    "USER_FIELDS",
    "CompiledTemplate", "LimitReport", "Rendered", "RenderError", "SmsCount", "TemplateContent",
    "campaign_variables", "check_limits", "compiled_template", "estimate_parts", "get_template", "html_to_text",
    "language_chain", "message_variables", "missing_parts", "resolve_parts", "sms_count", "sms_encoding",
    "template_record", "template_syntax_problems", "unresolved_variables", "user_variables", "variables_used",
    "versions",
]

"""Decode raw Kafka records into typed records, or into dead letters with a reason.

Pure: takes ``RawRecord`` values (what the consumer saw) and returns what to
process and what to dead-letter. Nothing here touches Kafka.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.records import DeadLetter

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Decoded(Generic[M]):
    records: list[M]
    sources: list[RawRecord]  # sources[i] is the raw record records[i] came from
    dead: list[DeadLetter]


def explain(error: ValidationError) -> str:
    """One line that names each failing field and why: ``email: not an email address``."""
    parts = []
    for item in error.errors(include_url=False):
        if item["type"] == "json_invalid":
            return f"not JSON: {item['ctx'].get('error', item['msg'])}"
        if item["type"] == "model_type" or (item["type"] == "model_attributes_type" and not item["loc"]):
            return "expected a JSON object"
        field = ".".join(str(p) for p in item["loc"]) or "record"
        parts.append(f"{field}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def dead_letter(raw: RawRecord, stage: str, reason: str) -> DeadLetter:
    return DeadLetter(
        source_topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        stage=stage,
        reason=reason,
        key=base64.b64encode(raw.key).decode() if raw.key is not None else None,
        value=base64.b64encode(raw.value or b"").decode(),
    )


def decode_batch(raws: list[RawRecord], model: type[M], stage: str) -> Decoded[M]:
    records: list[M] = []
    sources: list[RawRecord] = []
    dead: list[DeadLetter] = []
    for raw in raws:
        if not raw.value:
            dead.append(dead_letter(raw, stage, "empty value"))
            continue
        try:
            # Straight from bytes: pydantic-core parses and validates in one pass.
            records.append(model.model_validate_json(raw.value))
        except ValidationError as exc:
            dead.append(dead_letter(raw, stage, explain(exc)))
        else:
            sources.append(raw)
    return Decoded(records, sources, dead)


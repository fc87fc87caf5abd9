"""watch_dead_letters: dead-letters → a log line and a count per source and stage.

Input: ``dead-letters`` (JSON ``DeadLetter``, written by every stage).
Output: none; updates the ``dead_letter_counts`` table.
Side effects: logs each letter with its reason, so an operator sees bad input as it
arrives; ``make dlq-replay`` (a later issue) sends letters back through their topic.
"""

import orjson
import structlog

from pipeline.app import app, dead_letters_topic
from tables.dead_letters import dead_letter_counts

log = structlog.get_logger()


@app.agent(dead_letters_topic)
async def watch_dead_letters(stream):
    async for value in stream:
        try:
            letter = orjson.loads(value)
            where = f"{letter['source_topic']}/{letter['stage']}"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            where, letter = "unknown/unknown", {"reason": "unreadable dead letter"}
        dead_letter_counts[where] += 1
        log.warning("dead letter", where=where, reason=letter.get("reason"),
                    partition=letter.get("partition"), offset=letter.get("offset"))

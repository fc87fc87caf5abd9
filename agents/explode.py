"""explode: campaign-launches → message-requests, one record per (chunk, partition), exactly once.

Input: ``campaign-launches`` (JSON ``CampaignLaunch``, keyed by campaign id).
Output: ``message-requests`` (JSON ``MessageBatch``: up to 500 recipients of ONE
partition, sent to that partition, key = batch_id); ``dead-letters`` for records
that fail validation or whose audience cannot be resolved.
Side effects: PostgreSQL ``launch_audiences`` (frozen audience + checkpoint);
Redis ``campaign:{id}:status|launch`` at the start, ``campaign:{id}:expected|audience``
at the end (``pipeline.campaign_state``).

How a launch is processed, and why it is exactly-once on the topic:

1. A session-level advisory lock on the launch id (PostgreSQL) fences a second
   worker that got the same record after a rebalance: it waits, then finds the
   launch done. A SIGKILLed worker's connection closes and its lock goes with it.
2. First time: the audience is resolved (``pipeline.launch_audience``) and frozen
   into ``launch_audiences`` with the current end offsets of message-requests.
   Later times: read back; a finished launch is ignored (idempotent).
3. The batches follow deterministically from the frozen ids (``pipeline.explode.plan``).
   They are sent a window of chunks at a time; after Kafka acknowledged the whole
   window, the checkpoint (next chunk + per-partition offsets after the last
   acknowledged record) is written.
4. On a resume, records written after the checkpoint's offsets are read back and
   their batch ids skipped (``pending_batches``): sent-but-not-checkpointed work is
   neither repeated nor lost. The producer is idempotent, so its own retries add
   no copies either.
5. The launch record's offset is committed (``pipeline.batch_consumer``) only after all of it.

Runs as a bulk consumer task (group ``<app_id>.explode``): a launch is one record
that takes seconds, and its commit must wait for the whole explosion.

The decisions are pipeline/explode.py's; every store call, in the order above,
pipeline/explode_io.py's. ``python -m agents.explode --launch-file f.json [--pace-s S
--window N]`` explodes one launch in this process, outside any consumer group (tests kill
it mid-launch).
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from agents._io import send_dead_letters
from pipeline import explode_io
from pipeline.app import app, audience, clients, settings
from pipeline.batch_consumer import run_forever
from pipeline.codecs import RawRecord, dead_letter, decode_batch
from pipeline.worker_clients import StartedOnce
from schemas.campaigns import CampaignLaunch
from schemas.topics import CAMPAIGN_LAUNCHES

log = structlog.get_logger("herald.explode")
_exploder = StartedOnce(lambda: explode_io.Exploder(settings, clients, audience))


async def explode_batch(raws: list[RawRecord]) -> None:
    exploder = await _exploder.get()
    decoded = decode_batch(raws, CampaignLaunch, stage="explode")
    dead = list(decoded.dead)
    for launch, raw in zip(decoded.records, decoded.sources):
        outcome = await exploder.explode(launch)
        if outcome.letter and outcome.reason:
            dead.append(dead_letter(raw, "explode", outcome.reason))
    await send_dead_letters(dead)


@app.task
async def follow_audience() -> None:
    """Keep this worker's audience store open and following the user topics."""
    delay = 1.0
    while True:
        try:
            await audience.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker audience store failed; reopening", delay_s=delay)
        await asyncio.sleep(delay)
        delay = min(30.0, delay * 2)


@app.task
async def explode_launches() -> None:
    try:
        await run_forever(settings, CAMPAIGN_LAUNCHES.name, "explode", explode_batch)
    finally:  # worker shutdown: close the exploder's own reader (the shared clients close with the app)
        await _exploder.stop()


if __name__ == "__main__":
    asyncio.run(explode_io.main(sys.argv[1:], settings))

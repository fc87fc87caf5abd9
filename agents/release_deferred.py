"""release_deferred: messages deferred (quiet hours, recipients' local hour) → outbox.<channel> when due.

Input: Redis ``gate:deferred`` (written by agents/gate.py; each member an encoded
outbox ``MessageBatch`` whose recipients carry ``not_before``, scored by release time).
Output: the batch to ``outbox.<channel>`` on its partition and "queued" events; a
paused campaign's batch goes to ``campaign:{id}:held`` ("held"), a cancelled one's
is dropped ("cancelled").
Every worker runs this timer; a Lua claim with a lease hands each batch to one of
them, and a worker that dies before sending leaves it due again after the lease.
No table is written here (a timer has no partition to write a changelog to): the
gate recorded dedup and caps when it deferred.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import orjson
import structlog
from redis.exceptions import RedisError

from agents._io import emit_events
from pipeline import control
from pipeline import gate as gate_rules
from pipeline.app import app, clients, outbox_topics, settings
from pipeline.gate_io import GateIO

log = structlog.get_logger()
stores = GateIO(settings, clients)


@app.timer(interval=1.0)
async def release_deferred() -> None:
    try:
        due = await stores.claim_due(time.time())
    except (RedisError, OSError) as exc:
        log.warning("release_deferred: Redis unavailable", error=repr(exc))
        return
    for member in due:
        batch = orjson.loads(member)
        cid, channel, partition = batch["campaign_id"], batch["channel"], batch["partition"]
        status = await stores.status(cid)
        if control.halts(status):  # held (paused) or dropped (cancelled), as everywhere
            await stores.halt(cid, status, f"deferred:{batch['batch_id']}", member)
            events = control.halted_events(cid, batch.get("step", "send"), control.batch_recipients(batch),
                                           [channel], status)
        else:
            await outbox_topics[channel].send(key=batch["batch_id"].encode(), value=member, partition=partition)
            at = datetime.now(timezone.utc).isoformat()
            events = [gate_rules.delivery_event(cid, user_id, channel, batch.get("step", "send"), variant, "queued",
                                                None, at) for user_id, variant in control.batch_recipients(batch)]
        await emit_events(partition, events)
        await stores.released([member])

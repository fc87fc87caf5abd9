"""Send dead-lettered messages through their outbox again (``make dlq-replay`` and the API).

A sender's dead letter (stage ``send_<channel>``) carries the outbox batch
narrowed to the one recipient that could not be sent; replaying puts that
batch back on its ``outbox.<channel>`` topic and partition with ``attempt`` + 1.
Letters of other stages (malformed ingest records...) are counted as skipped, not
replayed: they need a fix, not a retry.

Replaying is safe to repeat: the senders' idempotency ledger skips a message the
provider already acknowledged, and the gate is not passed again (a replayed
message was released once already). Without a campaign the run reads from where
the last run stopped (offsets committed in group ``<app_id>.dlq-replay``) up to
the topic's end when it started; with a campaign it scans the whole topic and
commits nothing, so letters of other campaigns are left for later.
"""

from __future__ import annotations

import base64

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from config import Settings
from schemas.messages import MessageBatch
from schemas.records import DeadLetter
from schemas.topics import DEAD_LETTERS, OUTBOX

log = structlog.get_logger("herald.dlq")
OUTBOX_NAMES = frozenset(spec.name for spec in OUTBOX.values())


def replayable(letter: DeadLetter, campaign_id: int | None = None) -> MessageBatch | None:
    """The outbox batch to send again, or None if the letter is not a sender's (or not the campaign's)."""
    if not letter.stage.startswith("send_") or letter.source_topic not in OUTBOX_NAMES:
        return None
    try:
        batch = MessageBatch.model_validate_json(base64.b64decode(letter.value))
    except (ValidationError, ValueError):
        return None
    if campaign_id is not None and batch.campaign_id != campaign_id:
        return None
    return batch.model_copy(update={"attempt": batch.attempt + 1})


async def replay(settings: Settings, campaign_id: int | None = None, dry_run: bool = False) -> dict[str, int]:
    group = None if campaign_id is not None else f"{settings.app_id}.dlq-replay"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, acks="all")
    await consumer.start()
    await producer.start()
    counts = {"letters": 0, "replayed": 0, "skipped": 0}
    try:
        if not consumer.partitions_for_topic(DEAD_LETTERS.name):
            await consumer._client.force_metadata_update()
        numbers = sorted(consumer.partitions_for_topic(DEAD_LETTERS.name) or ())
        partitions = [TopicPartition(DEAD_LETTERS.name, p) for p in numbers]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        if group is None:
            await consumer.seek_to_beginning(*partitions)
        todo = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        sends = []
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        todo.discard(tp)
                        break
                    counts["letters"] += 1
                    try:
                        letter = DeadLetter.model_validate_json(record.value)
                    except ValidationError:
                        counts["skipped"] += 1
                        continue
                    again = replayable(letter, campaign_id)
                    if again is None:
                        counts["skipped"] += 1
                        continue
                    counts["replayed"] += 1
                    log.info("replay", topic=letter.source_topic, partition=letter.partition,
                             campaign_id=again.campaign_id, users=[r.user_id for r in again.recipients],
                             was=letter.reason, dry_run=dry_run)
                    if not dry_run:
                        value = orjson.dumps(again.model_dump(mode="json"))
                        sends.append(await producer.send(letter.source_topic, value, key=again.batch_id.encode(),
                                                         partition=letter.partition))
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        for sent in sends:
            await sent
        if group is not None and not dry_run:
            await consumer.commit({tp: ends[tp] for tp in partitions})
    finally:
        await producer.stop()
        await consumer.stop()
    return counts

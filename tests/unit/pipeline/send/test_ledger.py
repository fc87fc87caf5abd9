"""The idempotency ledger's acknowledgements (pipeline/send/ledger.py): written as the provider answers."""

from __future__ import annotations

import asyncio

from pipeline.send.ledger import AckWriter


class _SlowLedger:
    """Records each write and how many were on their way at once."""

    def __init__(self) -> None:
        self.writes: list[dict] = []
        self.busy = 0
        self.most_busy = 0

    async def acked(self, acks) -> None:
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        await asyncio.sleep(0.01)
        self.writes.append({k: dict(v) for k, v in acks.items()})
        self.busy -= 1


async def test_ack_writer_writes_answers_as_they_come_one_write_at_a_time():
    ledger = _SlowLedger()
    acks = AckWriter(ledger)
    acks.add("k", 1, "p1")
    acks.add("k", 2, None)  # same tick: same write
    await asyncio.sleep(0.002)  # the first write is on its way
    acks.add("k", 3, "p3")
    acks.add("other", 4, "p4")
    assert ledger.writes == []  # nothing stored yet: flush must wait
    await acks.flush()
    assert ledger.writes == [{"k": {1: "p1", 2: "-"}}, {"k": {3: "p3"}, "other": {4: "p4"}}]
    assert ledger.most_busy == 1
    await acks.flush()  # nothing pending: returns at once
    assert len(ledger.writes) == 2

"""The sender's consumer (pipeline/send/consumer.py): which offsets may be committed."""

from __future__ import annotations

from pipeline.send.consumer import OffsetTracker


def test_offsets_are_committed_behind_the_oldest_batch_still_in_flight():
    offsets = OffsetTracker()
    for offset in (10, 11, 12):
        offsets.start("p0", offset)
    offsets.start("p1", 5)
    offsets.finish("p0", 11)  # a later batch finishing first does not move the commit past 10
    offsets.finish("p1", 5)
    assert offsets.committable() == {"p0": 10, "p1": 6}
    offsets.committed.update(offsets.committable())
    offsets.finish("p0", 10)
    assert offsets.committable() == {"p0": 12}
    offsets.finish("p0", 12)
    assert offsets.committable() == {"p0": 13}

"""pipeline.memory: giving the heap back after bursts, and telling where it is."""

from __future__ import annotations

import tracemalloc

import os

from pipeline.memory import AfterBursts, GiveBacks, HeapDumps, dump_heap


def test_a_give_back_is_due_once_enough_work_was_done_since_the_last():
    bursts = AfterBursts(threshold=100)
    bursts.add(60)
    assert not bursts.due()
    bursts.add(40)
    assert bursts.due() and not bursts.due()


def test_the_tail_of_a_burst_is_given_back_once_the_work_stops():
    bursts = AfterBursts(threshold=100)
    bursts.add(30)
    assert not bursts.due()  # still working
    bursts.add(10)
    assert not bursts.due()
    assert bursts.due()  # nothing since the last look: the burst is over
    assert not bursts.due() and not bursts.due()  # nothing to give back
    bursts.add(5)
    assert not bursts.due() and not bursts.due()  # a trickle is not worth a full collection


def _hold() -> list[bytes]:
    return [bytes(200) for _ in range(20_000)]


def test_the_heap_dump_names_the_lines_that_hold_the_memory(tmp_path):
    path = tmp_path / "heap.txt"
    assert not dump_heap(path) and not path.exists()  # nothing traces: nothing written
    tracemalloc.start(4)
    try:
        held = _hold()
        assert dump_heap(path, top=5)
    finally:
        tracemalloc.stop()
    text = path.read_text()
    assert "traced" in text and "test_memory.py" in text.splitlines()[1]
    assert len(held) == 20_000


def test_a_touched_request_gets_one_dump_from_a_tracing_worker(tmp_path):
    request, out = tmp_path / "heap-dump.request", tmp_path / "heap-1.txt"
    dumps = HeapDumps(request, out)
    request.touch()
    assert not dumps.check()  # not tracing: nothing
    tracemalloc.start(2)
    try:
        assert dumps.check() and not dumps.check()  # once per touch
        os.utime(request, (1, 1))
        assert dumps.check()
    finally:
        tracemalloc.stop()
    assert out.read_text().count("traced") == 2


def test_a_touched_request_gets_one_give_back(tmp_path):
    request = tmp_path / "give-back.request"
    backs = GiveBacks(request)
    assert not backs.check()  # no file: nothing asked
    request.touch()
    assert backs.check() and not backs.check()
    os.utime(request, (2, 2))
    assert backs.check()

"""The durable timers' index: which users' waits end when, per partition. Pure, no I/O.

The durable part is each member's ``wake_at`` in the journey table (restored from its changelog
after a restart); this index is the worker's in-memory view of it, rebuilt from the table when the
worker recovers its partitions, and kept up to date as members park. Nothing scans the waiting
users: a tick pops the slots whose second has come (a heap of seconds), so a million users parked
for a day cost their index entries (8 bytes each, by second and partition) and no CPU until due.

An entry may be stale (the user moved on since): the wake-up is checked against the member's own
``wake_at`` by the engine, so a stale entry costs one table lookup and changes nothing.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Iterable


class TimerIndex:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []  # (second, partition) of every slot
        self._slots: dict[tuple[int, int], array] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, partition: int, user_id: int, due: float) -> None:
        second = math.ceil(due)
        key = (second, partition)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = array("q")
            heapq.heappush(self._heap, key)
        slot.append(user_id)
        self._count += 1

    def next_due(self) -> float | None:
        return float(self._heap[0][0]) if self._heap else None

    def pop_due(self, now: float) -> list[tuple[int, int, list[int]]]:
        """(partition, second, user ids) of every slot due at ``now``, removed from the index."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            key = heapq.heappop(self._heap)
            slot = self._slots.pop(key, None)
            if slot is not None:
                self._count -= len(slot)
                out.append((key[1], key[0], list(dict.fromkeys(slot))))
        return out

    def keep_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the slots of partitions this worker no longer owns."""
        keep = set(partitions)
        for key in [k for k in self._slots if k[1] not in keep]:
            self._count -= len(self._slots.pop(key))
        self._heap = [k for k in self._heap if k in self._slots]
        heapq.heapify(self._heap)

    def clear(self) -> None:
        self._heap.clear()
        self._slots.clear()
        self._count = 0

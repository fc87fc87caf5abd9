"""Giving memory back after a burst: a long-running worker that parsed a million records keeps the freed
heap it used for them (glibc keeps freed chunks for reuse; CPython returns an arena only when all of it is
free), so its resident size shows the burst's peak, not what it holds. After a burst, a full collection
and glibc's ``malloc_trim`` hand the free pages back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def give_back() -> bool:
    """Collect garbage and return free heap pages to the system; False where glibc is not the allocator."""
    gc.collect()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class AfterBursts:
    """Whether enough work happened since the last time to be worth a ``give_back`` (it walks the heap)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.count = 0

    def add(self, n: int = 1) -> None:
        self.count += n

    def due(self) -> bool:
        if self.count < self.threshold:
            return False
        self.count = 0
        return True

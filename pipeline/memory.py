"""Giving memory back after a burst: a long-running worker that parsed a million records keeps the freed
heap it used for them (glibc keeps freed chunks for reuse; CPython returns an arena only when all of it is
free), so its resident size shows the burst's peak, not what it holds. After a burst, a full collection
and glibc's ``malloc_trim`` hand the free pages back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
import tracemalloc
from functools import lru_cache
from pathlib import Path


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
    """Whether enough work happened since the last time to be worth a ``give_back`` (it walks the heap):
    ``threshold`` worth of it, or an eighth of that once the work has stopped (nothing added between two
    looks), so that the tail of a burst is handed back too; a trickle never is (each give-back costs a
    full collection, which over a million parked users is not free)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.count = 0
        self._last_look = 0

    def add(self, n: int = 1) -> None:
        self.count += n

    def due(self) -> bool:
        quiet = self.count == self._last_look
        if self.count >= self.threshold or (quiet and self.count >= self.threshold // 8):
            self.count = self._last_look = 0
            return True
        self._last_look = self.count
        return False


def dump_heap(path: Path, top: int = 40) -> bool:
    """Where the heap is, by the lines that allocated it (``PYTHONTRACEMALLOC`` must have started tracing):
    the ``top`` lines by size, appended to ``path``. False when nothing traces."""
    if not tracemalloc.is_tracing():
        return False
    gc.collect()
    stats = tracemalloc.take_snapshot().statistics("traceback")[:top]
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"── {time.strftime('%H:%M:%S')} pid {os.getpid()}: traced {current / 2**20:.1f} MiB (peak {peak / 2**20:.1f})"]
    for stat in stats:
        lines.append(f"{stat.size / 2**20:9.1f} MiB {stat.count:10d} blocks  " +
                     " <- ".join(f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno}" for f in stat.traceback[:4]))
    with path.open("a") as out:
        out.write("\n".join(lines) + "\n")
    return True


class Touched:
    """A request file a person (or a bench) touches to ask every worker for something: ``seen`` says whether
    it was touched since the last look (a signal would not do: a worker's SIGUSR1/SIGUSR2 are Faust's,
    stack traces and a debugger)."""

    def __init__(self, request: Path) -> None:
        self.request = request
        self.last = self._stamp()

    def _stamp(self) -> float | None:
        try:
            return self.request.stat().st_mtime
        except OSError:
            return None

    def seen(self) -> bool:
        stamp = self._stamp()
        if stamp is None or stamp == self.last:
            return False
        self.last = stamp
        return True


class HeapDumps:
    """Heap dumps on request: while tracemalloc traces (a worker started with PYTHONTRACEMALLOC=3, say),
    touching ``request`` makes every worker append ``dump_heap`` to its own file."""

    def __init__(self, request: Path, out: Path) -> None:
        self.touched = Touched(request)
        self.out = out

    def check(self) -> bool:
        """Dump if the request was touched since the last look; True if a dump was written."""
        if not tracemalloc.is_tracing():
            return False
        return self.touched.seen() and dump_heap(self.out)


class GiveBacks:
    """``give_back`` on request: touching ``request`` makes every worker hand its free heap back, so that a
    measurement of resident memory (bench/triggers.py's before and after) reads what is held, not the peak
    of an earlier burst."""

    def __init__(self, request: Path) -> None:
        self.touched = Touched(request)

    def check(self) -> bool:
        return self.touched.seen() and give_back()

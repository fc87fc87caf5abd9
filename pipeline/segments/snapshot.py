"""Snapshots of the audience store: one directory per snapshot, renamed into place.

    <audience_dir>/snapshot-<unix ms>-<pid>/
        meta.json        column kinds, dictionaries, Kafka offsets per topic and partition
        0.npy, 1.npy ... one array per column (``meta.json`` maps names to files)

A snapshot is written into a hidden temporary directory and renamed when
complete, so a reader only ever sees whole snapshots; several processes may
share the directory (each writes its own names). Readers take the newest that
loads and fall back to older ones. The newest ``KEEP`` survive a write.

``fork_snapshot`` writes from a forked child, as Redis's BGSAVE does: the
child sees the store frozen at the fork (so contents and offsets agree) while
the parent keeps applying batches; copy-on-write only duplicates the pages the
parent touches meanwhile. At 10M users a write takes seconds, which would
otherwise hold back every update for as long.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import structlog

from pipeline.segments.store import AudienceStore

log = structlog.get_logger("herald.segments")

KEEP = 2
_PREFIX = "snapshot-"


def write_snapshot(store: AudienceStore, directory: Path, keep: int = KEEP) -> Path:
    """Write ``store`` under ``directory`` atomically, keeping the newest ``keep`` snapshots (1 after an
    erasure: older ones still hold the erased users); returns the snapshot's path."""
    directory.mkdir(parents=True, exist_ok=True)
    meta, arrays = store.export_state()
    temp = directory / f".tmp-{uuid.uuid4().hex}"
    temp.mkdir()
    try:
        files = {}
        for i, (name, array) in enumerate(arrays.items()):
            files[name] = f"{i}.npy"
            with open(temp / files[name], "wb") as fh:
                np.save(fh, array, allow_pickle=False)
        meta["files"] = files
        with open(temp / "meta.json", "w") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        final = directory / f"{_PREFIX}{time.time_ns() // 1_000_000:015d}-{os.getpid()}"
        os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _prune(directory, keep)
    return final


def fork_snapshot(store: AudienceStore, directory: Path, keep: int = KEEP) -> int | None:
    """Start writing ``store`` in a child process; its pid, or None where fork is unavailable."""
    if not hasattr(os, "fork"):
        return None
    directory.mkdir(parents=True, exist_ok=True)
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:  # the child: only numpy and files, never the event loop, polars or sockets
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        write_snapshot(store, directory, keep)
        status = 0
    finally:
        os._exit(status)


def read_newest(directory: Path) -> AudienceStore | None:
    """The newest snapshot that loads, or None when there is none."""
    for path in _snapshots(directory):
        try:
            return read_snapshot(path)
        except (OSError, ValueError, KeyError) as exc:  # pruned or damaged meanwhile: try an older one
            log.warning("audience snapshot unreadable", path=str(path), error=str(exc))
    return None


def read_snapshot(path: Path) -> AudienceStore:
    with open(path / "meta.json") as fh:
        meta = json.load(fh)
    arrays = {name: np.load(path / file, allow_pickle=False) for name, file in meta["files"].items()}
    return AudienceStore.from_state(meta, arrays)


def _snapshots(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.name.startswith(_PREFIX) and p.is_dir()),
                  key=lambda p: p.name, reverse=True)


def _prune(directory: Path, keep: int = KEEP) -> None:
    for old in _snapshots(directory)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for temp in directory.glob(".tmp-*"):  # left by a writer that died, if old enough
        try:
            if time.time() - temp.stat().st_mtime > 3600:
                shutil.rmtree(temp, ignore_errors=True)
        except OSError:
            pass

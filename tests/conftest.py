"""Shared fixtures. Integration tests use the real local stack (``make up``); a
server that cannot be reached makes them fail, never skip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def worker(settings: Settings):
    """One real Faust worker process for the session, consuming Herald's topics."""
    log_path = settings.local_dir / "logs" / "test-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.worker", "worker", "-l", "warn", "--without-web"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    time.sleep(0.5)
    if proc.poll() is not None:
        pytest.fail(f"worker exited at once; see {log_path}")
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

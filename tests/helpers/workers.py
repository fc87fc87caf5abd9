"""The session's one real Faust worker process (``Workers``), started and stopped for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from config import Settings
from config.settings import REPO_ROOT as REPO


# Most tests are about something other than consent, and send SMS at any hour to users who never
# recorded any: their workers run without opt-in channels or per-channel quiet hours. Tests of those
# rules pass their own values (tests/integration/api/test_sms_inbound.py passes the defaults).
NOT_ABOUT_CONSENT = {"HERALD_GATE_OPT_IN_CHANNELS": "", "HERALD_GATE_CHANNEL_QUIET_HOURS": ""}


class Workers:
    """The session's one real Faust worker process.

    Every worker joins the same consumer groups, so two alive at once would split
    the partitions between them and a test's messages could go to a worker whose
    providers point elsewhere. Tests therefore never start workers themselves:
    ``ensure(env)`` returns the running worker if it was started with the same
    extra environment (the providers a module's peers listen on, say), and
    otherwise stops it and starts one with that environment.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def ensure(self, env: dict[str, str] | None = None, name: str = "test-worker") -> subprocess.Popen:
        env = {**NOT_ABOUT_CONSENT, **(env or {})}
        if self.proc is not None and self.proc.poll() is None and env == self.env:
            return self.proc
        self.stop()
        log_path = self.settings.local_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.worker", "worker", "-l", "warn", "--without-web"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env},
            )
        time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"worker exited at once; see {log_path}")
        self.proc, self.env = proc, env
        return proc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

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
        env = dict(env or {})
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


@pytest.fixture(scope="session")
def workers(settings: Settings):
    workers = Workers(settings)
    yield workers
    workers.stop()


@pytest.fixture(scope="session")
def default_providers() -> dict[str, str]:
    """Provider peers for the session's default worker, answering like healthy providers.

    Without them the default worker's senders would retry every message against closed
    ports for seconds: a backlog that pacing rightly reports as "behind", holding the gate
    of whichever test comes next. Not recording: nobody inspects what they receive.
    """
    from tests.peers import FcmPeer, SmtpPeer, TwilioPeer

    smtp, sms, push = SmtpPeer(record=False).start(), TwilioPeer(record=False).start(), FcmPeer(record=False).start()
    yield {"HERALD_SMTP_HOST": smtp.host, "HERALD_SMTP_PORT": str(smtp.port), "HERALD_SMS_URL": sms.url,
           "HERALD_PUSH_URL": push.url, "HERALD_EMAIL_PROVIDER": "smtp"}
    for peer in (smtp, sms, push):
        peer.stop()


@pytest.fixture
def worker(workers: Workers, default_providers: dict[str, str]) -> subprocess.Popen:
    """The session's worker with healthy default providers (restarted if a module had changed them)."""
    return workers.ensure(default_providers)

"""Shared fixtures. Integration tests use the real local stack (``make up``); a
server that cannot be reached makes them fail, never skip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import Settings, get_settings
from pipeline.logs import configure_logging
from tests.helpers.logscan import log_offsets
from tests.helpers.workers import Workers


class _Tee:
    """The test process's log lines (the in-process API's, the helpers') to pytest's capture and a file."""

    def __init__(self, path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, text: str) -> int:
        self.file.write(text)
        return sys.stdout.write(text)

    def flush(self) -> None:
        self.file.flush()
        sys.stdout.flush()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runs_last: run after every other collected test (the log scan)")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note how long each log is before the run (the log scan reads what the run adds), and log to a file too."""
    logs = get_settings().local_dir / "logs"
    session.config.stash[LOG_OFFSETS] = log_offsets(logs)
    configure_logging(_Tee(logs / "tests.log"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)  # stable: order kept otherwise


LOG_OFFSETS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def log_offsets_at_start(request: pytest.FixtureRequest) -> dict:
    return request.config.stash[LOG_OFFSETS]



@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


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

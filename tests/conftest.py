"""Shared fixtures. Integration tests use the real local stack (``make up``); a
server that cannot be reached makes them fail, never skip."""

from __future__ import annotations

import subprocess

import pytest

from config import Settings, get_settings
from tests.helpers.workers import Workers



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

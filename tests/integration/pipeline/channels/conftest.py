"""Settings that point the channel adapters at the module's provider peers (``peers``/``live``)."""

from __future__ import annotations

import pytest

from config import Settings
from tests.peers import peer_settings


@pytest.fixture
def channel_settings(settings: Settings, live: dict) -> Settings:
    return peer_settings(settings, smtp=live["smtp"], sms=live["sms"], push=live["push"])

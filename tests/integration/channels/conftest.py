"""Provider peers for the channel adapters: started once per module, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config import Settings
from tests.peers import FcmPeer, SmtpPeer, TwilioPeer, WebhookPeer, peer_settings


@pytest.fixture(scope="module")
def peers() -> Iterator[dict]:
    started = {"smtp": SmtpPeer().start(), "sms": TwilioPeer().start(), "push": FcmPeer().start(),
               "webhook": WebhookPeer().start()}
    yield started
    for peer in started.values():
        peer.stop()


@pytest.fixture
def live(peers: dict) -> dict:
    for peer in peers.values():
        peer.reset()
    return peers


@pytest.fixture
def channel_settings(settings: Settings, live: dict) -> Settings:
    return peer_settings(settings, smtp=live["smtp"], sms=live["sms"], push=live["push"])

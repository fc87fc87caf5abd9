"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.peers import FcmPeer, SmtpPeer, TwilioPeer, WebhookPeer


@pytest.fixture(scope="module")
def peers() -> Iterator[dict]:
    """Local provider peers (SMTP, Twilio- and FCM-shaped HTTP, a webhook receiver), one set per module."""
    started = {"smtp": SmtpPeer().start(), "sms": TwilioPeer().start(), "push": FcmPeer().start(),
               "webhook": WebhookPeer().start()}
    yield started
    for peer in started.values():
        peer.stop()


@pytest.fixture
def live(peers: dict) -> dict:
    """The module's peers, emptied of what earlier tests sent them."""
    for peer in peers.values():
        peer.reset()
    return peers

"""A generic webhook receiver: records every POST and answers 200 (or what ``fail_next`` says)."""

from __future__ import annotations

from tests.peers.http import HttpPeer, Request, Response


class WebhookPeer(HttpPeer):
    path = "/hooks/herald"

    def __init__(self, status: int = 200, **kwargs) -> None:
        super().__init__(**kwargs)
        self.status = status

    def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405, {"error": "POST only"})
        return Response(self.status, {"received": True})

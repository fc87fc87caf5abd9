"""A real SMTP server (aiosmtpd) that collects what it receives, for tests, benchmarks and ``make run``.

    peer = SmtpPeer().start()          # 127.0.0.1, an ephemeral port: peer.port
    ... send ...
    [mail] = peer.wait_for(1)
    mail.message["Subject"], mail.message.get_body(("html",)).get_content()

Failure injection mirrors the HTTP peers: ``reject(address)`` makes RCPT TO
answer ``550 5.1.1`` for that address (a hard bounce), ``fail_next(n)``
answers the next ``n`` DATA commands with ``451 4.3.0`` (try again later).
"""

from __future__ import annotations

import asyncio
import email
import threading
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from functools import cached_property

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.peers.loop import ServedPeer


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @cached_property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


class _Handler:
    def __init__(self, peer: SmtpPeer) -> None:
        self.peer = peer

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list) -> str:
        if address.lower() in self.peer.rejected:
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self.peer._accept(envelope)


class SmtpPeer(ServedPeer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, record: bool = True) -> None:
        self.host = host
        self.port = port
        self.record = record
        self.messages: list[Received] = []
        self.count = 0
        self.rejected: set[str] = set()
        self._failures: list[str] = []
        self._changed = threading.Condition()

    async def _listen(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        handler = _Handler(self)
        return await loop.create_server(
            lambda: SMTP(handler, hostname="peer.herald.local", loop=loop, command_call_limit=None),
            self.host, self.port, backlog=1024,
        )

    def reject(self, address: str) -> None:
        self.rejected.add(address.lower())

    def fail_next(self, n: int, reply: str = "451 4.3.0 Temporary failure, try again later") -> None:
        with self._changed:
            self._failures.extend([reply] * n)

    def reset(self) -> None:
        with self._changed:
            self.messages.clear()
            self._failures.clear()
            self.rejected.clear()
            self.count = 0

    def _accept(self, envelope: Envelope) -> str:
        with self._changed:
            if self._failures:
                return self._failures.pop(0)
            self.count += 1
            if self.record:
                data = envelope.original_content or envelope.content
                received = Received(envelope.mail_from or "", list(envelope.rcpt_tos), bytes(data or b""))
                self.messages.append(received)
            self._changed.notify_all()
            return f"250 2.0.0 Ok: queued as {self.count:08X}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self._changed:
            if not self._changed.wait_for(lambda: self.count >= count, timeout=timeout):
                raise TimeoutError(f"SmtpPeer got {self.count} messages, expected {count}")
            return list(self.messages)

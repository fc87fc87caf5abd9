"""Email over SMTP (aiosmtplib) with a small pool of connections kept open.

Opening an SMTP session (connect, greeting, EHLO) costs several round trips;
a campaign reuses ``pool_size`` open sessions, each carrying one transaction
at a time, so that many sends run side by side. A session that fails at the
connection level is dropped and reopened by the next send.

Outcomes: a 2xx after DATA is ``sent``; a 5xx reply (to RCPT, to the message)
is ``permanent`` (a 5xx to RCPT is a hard bounce: ``recipient_problem``); 4xx
replies, timeouts and lost connections are ``transient``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiosmtplib

from config import Settings
from pipeline.channels.base import ConcurrentSends, Message, SendResult
from pipeline.channels.mime import _BARE_ADDRESS, build_email, envelope_address, format_address
from pipeline.pii import redact


class SmtpChannel(ConcurrentSends):
    name = "email"

    def __init__(
        self,
        settings: Settings,
        pool_size: int = 4,
        sender: str | None = None,
    ) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.timeout = settings.provider_timeout_s
        self.sender = format_address(sender or settings.smtp_from)
        self.envelope_from = envelope_address(self.sender)
        self._envelope_from = self.envelope_from.encode("ascii")
        self.concurrency = pool_size
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(pool_size)
        self._open: set[aiosmtplib.SMTP] = set()

    def build(self, to: str, parts: Mapping[str, str], message_id: str, headers: Mapping[str, str] = {}) -> bytes:
        """The MIME bytes of a rendered email (do this once per message, before any retry)."""
        return build_email(
            sender=self.sender,
            to=to,
            subject=parts.get("subject", ""),
            text=parts.get("text", ""),
            html=parts.get("html"),
            message_id=message_id,
            headers=headers,
        )

    async def _connection(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            smtp = self._idle.get_nowait()
            if smtp.is_connected:
                return smtp
            self._open.discard(smtp)
        smtp = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=self.timeout, start_tls=False)
        await smtp.connect()
        if smtp.last_ehlo_response is None and smtp.last_helo_response is None:
            await smtp.ehlo()
        self._open.add(smtp)
        return smtp

    async def _transaction(self, smtp: aiosmtplib.SMTP, to: str, raw: bytes) -> SendResult:
        """MAIL, RCPT, DATA for one recipient, with the commands written directly, under ONE deadline.

        ``SMTP.sendmail`` parses both addresses with the ``email`` package on every
        call, and bounds each of its four reads with ``asyncio.wait_for`` (a task
        per read): together about a third of the client's CPU per message. Our
        envelope addresses are bare and checked once (``_BARE_ADDRESS``), and one
        ``asyncio.timeout`` bounds the whole transaction (a connection that hits it
        is dropped, the send is transient).
        """
        async with asyncio.timeout(self.timeout):
            reply = await smtp.execute_command(b"MAIL", b"FROM:<" + self._envelope_from + b">", timeout=None)
            if reply.code != 250:
                await self._reset(smtp)
                return _reply_result(reply.code, reply.message, recipient=False)
            reply = await smtp.execute_command(b"RCPT", b"TO:<" + to.encode("ascii") + b">", timeout=None)
            if reply.code not in (250, 251):
                await self._reset(smtp)
                return _reply_result(reply.code, reply.message, recipient=True)
            reply = await smtp.data(raw, timeout=None)
        return SendResult.sent(reply.message.strip() or None)

    @staticmethod
    async def _reset(smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset(timeout=None)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            pass

    async def _discard(self, smtp: aiosmtplib.SMTP) -> None:
        self._open.discard(smtp)
        try:
            smtp.close()
        except Exception:  # noqa: BLE001 - it is already broken
            pass

    async def send(self, message: Message) -> SendResult:
        if not _BARE_ADDRESS.fullmatch(message.to or ""):
            return SendResult.permanent(f"not a deliverable address: {message.to!r}", recipient_problem=True)
        raw = message.raw or self.build(message.to, message.parts, message.message_id, message.headers)
        async with self._slots:
            try:
                smtp = await self._connection()
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                return SendResult.transient(f"cannot connect to {self.host}:{self.port}: {exc}")
            keep = True
            try:
                result = await self._transaction(smtp, message.to, raw)
                if result.ok and not result.provider_id:
                    return SendResult.sent(message.message_id)
                return result
            except aiosmtplib.SMTPResponseException as exc:
                return _reply_result(exc.code, exc.message, recipient=False)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                keep = False
                return SendResult.transient(f"SMTP connection failed: {type(exc).__name__}: {exc}")
            finally:
                if keep and smtp.is_connected:
                    self._idle.put_nowait(smtp)
                else:
                    await self._discard(smtp)

    async def aclose(self) -> None:
        for smtp in list(self._open):
            try:
                await asyncio.wait_for(smtp.quit(), timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                smtp.close()
        self._open.clear()


def _reply_result(code: int, text: str, recipient: bool) -> SendResult:
    reason = redact(f"{code} {text}".strip())  # "550 <a@b> unknown": reasons are stored and logged
    if 500 <= code < 600:
        return SendResult.permanent(reason, code=str(code), recipient_problem=recipient)
    return SendResult.transient(reason, code=str(code))

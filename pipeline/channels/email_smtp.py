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
from pipeline.channels.mime import build_email, envelope_address, format_address


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
        self._open.add(smtp)
        return smtp

    async def _discard(self, smtp: aiosmtplib.SMTP) -> None:
        self._open.discard(smtp)
        try:
            smtp.close()
        except Exception:  # noqa: BLE001 - it is already broken
            pass

    async def send(self, message: Message) -> SendResult:
        raw = message.raw or self.build(message.to, message.parts, message.message_id, message.headers)
        async with self._slots:
            try:
                smtp = await self._connection()
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                return SendResult.transient(f"cannot connect to {self.host}:{self.port}: {exc}")
            keep = True
            try:
                _, reply = await smtp.sendmail(self.envelope_from, [message.to], raw)
                return SendResult.sent(reply.strip() or message.message_id)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0]
                return _reply_result(refused.code, refused.message, recipient=True)
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
    reason = f"{code} {text}".strip()
    if 500 <= code < 600:
        return SendResult.permanent(reason, code=str(code), recipient_problem=recipient)
    return SendResult.transient(reason, code=str(code))

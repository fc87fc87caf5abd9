"""How Herald's processes log: structlog's console lines, with addresses and phone numbers redacted.

No code logs an email address or a phone number on purpose; this is the safety net for what slips
through in an exception's text or a provider's error message ("The 'To' number +1… is not valid",
"550 <a@b> unknown"). The last step rewrites each finished line with ``pipeline.pii.redact``, and the
standard library's records (Faust, aiokafka, uvicorn) are redacted as they are made.
``configure_logging`` is called once by each entry point (the worker, the API) and is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any, TextIO

import structlog

from pipeline.pii import redact

_configured = False
_stream: TextIO | None = None  # None: standard output


def redact_line(logger: Any, method: str, line: Any) -> Any:
    """structlog processor placed after the renderer: the whole line, exceptions included, redacted."""
    return redact(line) if isinstance(line, str) else line


def configure_logging(stream: TextIO | None = None) -> TextIO | None:
    """structlog's default console lines, redacted; the stdlib's records redacted too.

    Lines go to ``stream`` when given, else where the last call sent them (standard output at
    first), so that an app built later keeps a test run's choice. Returns where they went before.
    """
    global _configured, _stream
    before = _stream
    _stream = stream if stream is not None else _stream
    _apply()
    return before


def restore_logging(stream: TextIO | None) -> None:
    """Send lines back to where ``configure_logging`` said they went before (None: standard output)."""
    global _stream
    _stream = stream
    _apply()


def _apply() -> None:
    global _configured
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=False),
            redact_line,
        ],
        logger_factory=structlog.PrintLoggerFactory(_stream),
        cache_logger_on_first_use=False,
    )
    if not _configured:
        _configured = True
        make = logging.getLogRecordFactory()

        def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave it for logging to report
                return record
            if "@" in message or "+" in message:
                redacted = redact(message)
                if redacted != message:
                    # An empty tuple, not None: mode's formatter turns None into (None,) and
                    # then fails on "msg % (None,)" (its "Logging error" at every agent's start).
                    record.msg, record.args = redacted, ()
            return record

        logging.setLogRecordFactory(redacting_record)

"""The log scan would catch a real leak, and the logging set-up redacts what slips through."""

from __future__ import annotations

import io
import logging

import structlog
from mode.utils.logging import ExtensionFormatter

from pipeline.logs import configure_logging, restore_logging
from tests.helpers.logscan import find_leaks, leaks_since, log_offsets


def test_the_scan_finds_test_users_addresses_by_shape():
    text = ("sent to=u1234567@example.test\nThe 'To' number +15550001234 is not valid\n"
            "bounce pref-9@example.com; from=+15550100000 campaigns@herald.local +14155550199 +15005550001")
    assert find_leaks(text, allowed={"+15550100000"}) == {
        "u1234567@example.test", "+15550001234", "pref-9@example.com", "+14155550199", "+15005550001"}
    assert find_leaks("campaign_id=15550001234 offset=+3 2026-12-05T15:00:00+00:00 [email] [phone]") == set()


def test_the_scan_reads_only_what_the_run_wrote(tmp_path):
    old = tmp_path / "test-worker.log"
    old.write_text("an older run: u1@example.test\n")
    offsets = log_offsets(tmp_path)
    with open(old, "a") as file:
        file.write("this run: u2@example.test\n")
    (tmp_path / "api.log").write_text("+15551234567 leaked\n")
    assert leaks_since(tmp_path, offsets) == {"test-worker.log": {"u2@example.test"},
                                             "api.log": {"+15551234567"}}


def test_a_leak_written_through_the_configured_logging_is_redacted(tmp_path):
    out = io.StringIO()
    before = configure_logging(out)
    stdlib = logging.getLogger("herald.test.log_scan")
    handler = logging.StreamHandler(out)
    stdlib.addHandler(handler)
    try:
        log = structlog.get_logger()
        log.warning("provider refused", reason="550 <u77@example.test> unknown", to="+15550000077")
        try:
            raise ValueError("not an email address: 'u78@example.test'")
        except ValueError:
            log.exception("batch failed")
        stdlib.error("Twilio: The 'To' number %s is not valid", "+15550000079")
    finally:
        stdlib.removeHandler(handler)
        restore_logging(before)
    text = out.getvalue()
    assert "provider refused" in text and "batch failed" in text and "ValueError" in text
    assert "The 'To' number [phone] is not valid" in text and "[email]" in text
    assert find_leaks(text) == set()
    # Unredacted, the same line is a leak the scan reports.
    assert find_leaks("reason=550 <u77@example.test> unknown") == {"u77@example.test"}


def test_records_made_through_the_redacting_factory_format_under_faust_s_formatter():
    """mode's formatter (Faust's worker log) wraps args; a record the factory touched still formats."""
    out = io.StringIO()
    before = configure_logging(out)
    stdlib = logging.getLogger("herald.test.mode_format")
    handler = logging.StreamHandler(out)
    handler.setFormatter(ExtensionFormatter(stream=out, fmt="%(message)s"))
    stdlib.addHandler(handler)
    errors: list[logging.LogRecord] = []
    raise_before, logging.raiseExceptions = logging.raiseExceptions, False
    handle_error, handler.handleError = handler.handleError, errors.append
    try:
        stdlib.warning("[^---OneForOneSupervisor: (1@0x7f3a2c0d1e50)]: Starting...")
        stdlib.warning("refused %s", "u80@example.test")
        stdlib.warning("plain +3 offset")
    finally:
        handler.handleError = handle_error
        logging.raiseExceptions = raise_before
        stdlib.removeHandler(handler)
        restore_logging(before)
    assert errors == []
    text = out.getvalue()
    assert "(1@0x7f3a2c0d1e50)]: Starting..." in text and "refused [email]" in text
    assert "plain +3 offset" in text

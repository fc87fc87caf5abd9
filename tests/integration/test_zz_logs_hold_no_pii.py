"""No test user's email address or phone number reached a log during this run.

Runs after every other test of the session (marker ``runs_last``; the name sorts it last too) and
reads what the run added to each log in ``.local/logs/``: the workers' (``tests/helpers/workers.py``),
the API's and the test process's own (``tests.log``, where the in-process API logs). Run alone it
only sees what it wrote itself: run it with the suite (``make test``) for it to mean something.
"""

from __future__ import annotations

import pytest

from tests.helpers.logscan import leaks_since


@pytest.mark.runs_last
def test_no_test_users_address_or_phone_number_is_in_the_logs(settings, log_offsets_at_start):
    leaks = leaks_since(settings.local_dir / "logs", log_offsets_at_start, allowed={settings.sms_from})
    assert leaks == {}, "addresses or phone numbers in the logs: " + "; ".join(
        f"{name}: {', '.join(sorted(found)[:20])}" for name, found in sorted(leaks.items()))

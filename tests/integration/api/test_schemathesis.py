"""Schemathesis against the API's own document: every operation answers as documented, none with a 5xx.

The real app is served over HTTP (uvicorn, the real stack behind it) and its
own ``/api/v1/openapi.json`` is loaded, so the test reads the document a client
reads. Each operation gets a bounded number of generated requests with a fixed
seed (the same requests every run), valid ones and invalid ones (wrong types,
values out of range, unknown parameters), sent with an admin key, and each answer is
checked: no 5xx, a documented status, a documented content type, a body that
fits the documented schema.

Excluded, with the reason (anything else in the document is run):
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance,
)

from api.app import create_app
from tests.helpers.api import bearer, serve

EXAMPLES = 40  # per operation and mode (valid, then invalid input): ~3,500 requests, about a minute on two cores
SEED = 16
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXCLUDED = {
    # Server-sent event streams answer 200 and never end: a generated request would wait forever for the body.
    ("GET", "/api/v1/dashboard/realtime/stream"): "an endless server-sent event stream",
    ("GET", "/api/v1/users/{user_id}/inbox/stream"): "an endless server-sent event stream",
}
__doc__ += "".join(f"\n- {method} {path}: {why}" for (method, path), why in EXCLUDED.items())


# The database is shared with other tests and helpers: requests that change things address ids beyond any row
# there (so a generated DELETE /api/v1/api-keys/1 cannot revoke someone's key), and the dead-letter replay is a dry
# run (a real one would re-send other tests' letters). Reads use the ids as generated.
FAR = 9 * 10**18


def _harmless(case) -> None:
    if case.method.upper() in ("GET", "HEAD"):
        return
    for name, value in (case.path_parameters or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            case.path_parameters[name] = FAR + value % 10**17
    if case.path == "/api/v1/dead-letters/replay" and isinstance(case.body, dict):
        case.body["dry_run"] = True


@pytest.fixture(scope="module")
def served(api_settings):
    url, stop = serve(create_app(api_settings), name="schemathesis-api")
    yield url
    stop()


def _operations(schema):
    for result in schema.get_all_operations():
        yield result.ok()


def test_every_operation_answers_as_documented(served, admin_key):
    schema = schemathesis.openapi.from_url(f"{served}/api/v1/openapi.json")
    headers = bearer(admin_key)
    operations = list(_operations(schema))
    run = [op for op in operations if (op.method.upper(), op.path) not in EXCLUDED]
    assert len(run) >= 50 and len(run) == len(operations) - len(EXCLUDED)
    failures: list[str] = []
    sent: Counter[int] = Counter()
    for op, mode in itertools.product(run, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):

        @seed(SEED)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case) -> None:
            _harmless(case)
            response = case.call_and_validate(base_url=served, headers=headers, checks=CHECKS, timeout=30)
            sent[response.status_code] += 1

        try:
            check()
        except Unsatisfiable:
            # Negative mode only: an operation whose one input is a free-form string (a token, no query) has no
            # invalid request to write; its valid requests ran above.
            if mode is not GenerationMode.NEGATIVE:
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): no request could be generated")
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - gather every operation's failures, then report
            failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:1500]}")
    print(f"schemathesis: {sum(sent.values())} requests to {len(run)} operations, by status {dict(sorted(sent.items()))}")
    assert not failures, "\n\n".join(failures)
    assert sum(sent.values()) >= 10 * len(run) and any(200 <= status < 300 for status in sent)

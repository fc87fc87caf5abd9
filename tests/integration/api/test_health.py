"""/healthz against the real servers, including one that goes away and comes back."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
from starlette.testclient import TestClient

from config.settings import REPO_ROOT as REPO


def stack(command: str, service: str) -> None:
    result = subprocess.run(
        [sys.executable, "scripts/stack.py", command, service], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"stack.py {command} {service}: {result.stdout}{result.stderr}"


def wait_for_health(client: TestClient, wanted: Callable[[httpx.Response], bool], within_s: float) -> httpx.Response:
    deadline = time.monotonic() + within_s
    while True:
        response = client.get("/healthz")
        if wanted(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_healthz_reports_every_server_version(client):
    response = client.get("/healthz")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["down"] == []
    checks = body["checks"]
    assert all(check["ok"] and check["latency_ms"] >= 0 for check in checks.values())
    assert re.fullmatch(r"\d+\.\d+", checks["postgres"]["version"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", checks["redis"]["version"])
    assert checks["cassandra"]["version"].startswith("5.0.")
    assert re.fullmatch(r"kafka metadata\.version=\d+", checks["kafka"]["version"])


def test_healthz_names_redis_while_it_is_down_and_recovers(client):
    assert client.get("/healthz").status_code == 200
    stack("stop", "redis")
    try:
        down = wait_for_health(client, lambda r: r.status_code == 503, within_s=10)
    finally:
        stack("start", "redis")  # waits until Redis answers again
    up = wait_for_health(client, lambda r: r.status_code == 200, within_s=20)

    assert down.status_code == 503, down.text
    report = down.json()
    assert report["status"] == "degraded"
    assert report["down"] == ["redis"]
    assert report["checks"]["redis"]["ok"] is False and report["checks"]["redis"]["error"]
    assert all(report["checks"][server]["ok"] for server in ("postgres", "cassandra", "kafka"))
    assert up.status_code == 200, up.text
    assert up.json()["checks"]["redis"]["version"]

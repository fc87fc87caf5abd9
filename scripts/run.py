"""`make run`: the whole of Herald on this machine, until Ctrl-C.

1. the local stack (Kafka, Cassandra, Redis, PostgreSQL) and the schemas;
2. the Faust worker(s) and the API (uvicorn);
3. the bootstrap admin key, written to ``.local/admin.key`` (mode 0600);
4. the demo audience produced to Kafka, so it arrives through ingestion like real data;
5. where everything is, and then it waits. Ctrl-C (or SIGTERM) stops every process
   this run started, servers included, and leaves the data in place.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import stack
from procs import Proc

import demo
from api.keys import bootstrap_admin_key
from config import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def start_app_processes(settings: Settings) -> list[Proc]:
    run_dir, logs = settings.local_dir / "run", settings.local_dir / "logs"
    procs = []
    for i in range(1, settings.workers + 1):
        proc = Proc(run_dir, f"app-worker-{i}")
        if not proc.running():
            proc.spawn([sys.executable, "-m", "pipeline.worker", "worker", "-l", "info", "--without-web"],
                       log=logs / f"worker-{i}.log", cwd=REPO)
        procs.append(proc)
    # Local protocol peers stand in for the channel providers (SMTP, Twilio- and
    # FCM-shaped HTTP, a batch email API, a webhook receiver) on the ports in settings.
    peers = Proc(run_dir, "app-peers")
    if not peers.running():
        peers.spawn([sys.executable, "-m", "tests.peers", "--quiet"], log=logs / "peers.log", cwd=REPO)
    procs.append(peers)
    api = Proc(run_dir, "app-api")
    if not api.running():
        api.spawn([sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                   "--host", settings.api_host, "--port", str(settings.api_port), "--no-access-log"],
                  log=logs / "api.log", cwd=REPO)
    procs.append(api)
    return procs


def wait_for_api(settings: Settings, procs: list[Proc], timeout_s: float = 90) -> None:
    url = f"http://{settings.api_host}:{settings.api_port}/healthz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive(settings, procs)
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the API did not answer {url} within {timeout_s:.0f}s; see .local/logs/api.log")


def check_alive(settings: Settings, procs: list[Proc]) -> None:
    for proc in procs:
        if not proc.running():
            log = settings.local_dir / "logs" / f"{proc.name[4:]}.log"
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise SystemExit(f"{proc.name} exited; last lines of {log}:\n" + "\n".join(tail))


async def demo_users_stored(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM users WHERE user_id BETWEEN 1 AND $1", settings.demo_users)
    finally:
        await conn.close()


def load_demo(settings: Settings, procs: list[Proc]) -> None:
    if settings.demo_users == 0:
        return
    if asyncio.run(demo_users_stored(settings)) >= settings.demo_users:
        say(f"demo audience already loaded ({settings.demo_users:,} users)")
        return
    say(f"producing the demo audience: {settings.demo_users:,} users and their last 90 days of events")
    report = asyncio.run(demo.produce_demo(settings, settings.demo_users))
    say(f"produced {report['profiles']:,} profiles and {report['events']:,} events in {report['seconds']}s")
    started = time.monotonic()
    while (stored := asyncio.run(demo_users_stored(settings))) < settings.demo_users:
        check_alive(settings, procs)
        say(f"ingested {stored:,} of {settings.demo_users:,} users into PostgreSQL")
        time.sleep(2)
    say(f"all {settings.demo_users:,} demo users ingested in {time.monotonic() - started:.1f}s "
        "(their events keep flowing into Cassandra)")


def main() -> None:
    settings = get_settings()
    stop_requested = False

    def request_stop(signum, _frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    started_servers: list[str] = []
    procs: list[Proc] = []
    try:
        started_servers = stack.up(settings)
        procs = start_app_processes(settings)
        wait_for_api(settings, procs)
        key = asyncio.run(bootstrap_admin_key(settings))
        load_demo(settings, procs)
        base = f"http://{settings.api_host}:{settings.api_port}"
        say("Herald is running.")
        say(f"  API            {base}/api/v1   (OpenAPI: {base}/api/v1/openapi.json)")
        say(f"  health         {base}/healthz")
        say(f"  metrics        {base}/metrics")
        say(f"  dashboard      {base}/dashboard   (paste the admin key; counters move while a campaign sends)")
        say(f"  admin key      {key}   (also in {settings.admin_key_file}, mode 0600)")
        say(f"  try:           curl -H 'Authorization: Bearer {key}' {base}/api/v1/me")
        say(f"  providers      SMTP {settings.smtp_host}:{settings.smtp_port}, SMS {settings.sms_url}, "
            f"push {settings.push_url} (local peers; see tests/peers)")
        say(f"  logs           {settings.local_dir / 'logs'}")
        say("Ctrl-C stops everything this run started.")
        while not stop_requested:
            check_alive(settings, procs)
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        for proc in reversed(procs):
            if proc.stop():
                say(f"stopped {proc.name}")
        if started_servers:
            stack.down(settings, started_servers)
        say("stopped; data stays in .local/ (make clean removes it)")


if __name__ == "__main__":
    main()

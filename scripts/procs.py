"""Processes the project starts: spawned detached, remembered by pid file, stopped by pid.

``make down`` stops exactly what was recorded here, never anything found by name.
A pid file also records the process's start time (from /proc), so a recycled pid
that now belongs to some other program is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, not yet reaped: as good as gone
        return None
    return fields[19]  # field 22 of /proc/<pid>/stat: starttime


class Proc:
    """One recorded process: ``<run_dir>/<name>.pid`` holds "pid start_ticks"."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.name = name
        self.pid_file = run_dir / f"{name}.pid"

    def pid(self) -> int | None:
        try:
            pid_text, ticks = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if _start_ticks(pid) == ticks else None

    def running(self) -> bool:
        return self.pid() is not None

    def spawn(self, argv: list[str], log: Path, cwd: Path | None = None,
              env: dict[str, str] | None = None, user: str | None = None) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env=env, start_new_session=True, user=user,
                group=user, extra_groups=[] if user else None,
            )
        self.pid_file.write_text(f"{proc.pid} {_start_ticks(proc.pid)}\n")
        return proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> bool:
        """Signal the process and wait for it to go; SIGKILL after ``timeout``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _start_ticks(pid) is not None:
            _reap(pid)
            time.sleep(0.1)
        if _start_ticks(pid) is not None:
            os.kill(pid, signal.SIGKILL)
            while _start_ticks(pid) is not None:
                _reap(pid)
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass

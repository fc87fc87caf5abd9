"""Run a Herald worker: ``python -m pipeline.worker worker -l info``.

A separate entry module, so that ``pipeline.app`` is imported once under its own
name (agents import it too) rather than a second time as ``__main__``.
"""

import os

from pipeline.app import app, settings
from pipeline.memory import dump_heap_on_signal


def main() -> None:
    # With PYTHONTRACEMALLOC set, `kill -USR2 <pid>` writes where the heap is to .local/logs/heap-<pid>.txt.
    dump_heap_on_signal(settings.local_dir / "logs" / f"heap-{os.getpid()}.txt")
    app.main()


if __name__ == "__main__":
    main()

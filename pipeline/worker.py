"""Run a Herald worker: ``python -m pipeline.worker worker -l info``.

A separate entry module, so that ``pipeline.app`` is imported once under its own
name (agents import it too) rather than a second time as ``__main__``.
"""

import os

from pipeline.app import app, settings
from pipeline.logs import configure_logging
from pipeline.memory import GiveBacks, HeapDumps

# With PYTHONTRACEMALLOC set, `touch .local/logs/heap-dump.request` makes each worker write where its heap is
# to .local/logs/heap-<pid>.txt.
heap_dumps = HeapDumps(settings.local_dir / "logs" / "heap-dump.request",
                       settings.local_dir / "logs" / f"heap-{os.getpid()}.txt")
# `touch .local/logs/give-back.request` makes each worker hand its free heap back to the system.
give_backs = GiveBacks(settings.local_dir / "logs" / "give-back.request")


@app.timer(2.0)
async def memory_on_request() -> None:
    heap_dumps.check()
    give_backs.check()


def main() -> None:
    configure_logging()  # no address or phone number reaches a worker's log
    app.main()


if __name__ == "__main__":
    main()

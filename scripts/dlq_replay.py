"""Send dead-lettered messages through their outbox again: ``make dlq-replay``.

    python scripts/dlq_replay.py                    letters not replayed yet (consumer group herald.dlq-replay)
    python scripts/dlq_replay.py --campaign 42      every letter of campaign 42 still in the topic
    python scripts/dlq_replay.py --dry-run          say what would be replayed, send nothing

What is replayed and why it is safe to repeat: ``pipeline/dlq.py``. The API does
the same with ``POST /api/v1/dead-letters/replay``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import get_settings  # noqa: E402
from pipeline.dlq import replay  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog="dlq-replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaign", type=int, help="only this campaign's letters (scans the whole topic)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    args = parser.parse_args()
    counts = asyncio.run(replay(get_settings(), args.campaign, args.dry_run))
    print(orjson.dumps(counts).decode())


if __name__ == "__main__":
    main()

"""Dead letters counted by where they came from: ``"<source_topic>/<stage>" → count``.

Keyed like the ``dead-letters`` topic is partitioned (by the letter's key), and
restored from its changelog after a crash.
"""

from pipeline.app import app
from schemas.topics import DEAD_LETTER_COUNTS

dead_letter_counts = app.Table(
    DEAD_LETTER_COUNTS.table_name,
    default=int,
    partitions=DEAD_LETTER_COUNTS.partitions,
    key_type=str,
    value_type=int,
)

"""tables/journey_state.py: the changelog's keys read and written as Faust's JSON codec does, without
orjson's ~4 KB buffer riding along with each record that waits in the producer's buffer."""

from __future__ import annotations

import tracemalloc

import faust.utils.json as faust_json
import pytest

from tables.journey_state import UserKey, journey_state


@pytest.mark.parametrize("key", ["1", "1000000000007", "not-a-user", "12a", ""])
def test_keys_are_the_bytes_faust_json_codec_writes_and_read_back(key):
    faust_bytes = faust_json.dumps(key)
    faust_bytes = faust_bytes.encode() if isinstance(faust_bytes, str) else faust_bytes
    assert UserKey().dumps(key) == faust_bytes
    assert UserKey().loads(faust_bytes) == key


def test_a_key_costs_its_own_size_not_a_buffer():
    codec = UserKey()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keys = [codec.dumps(str(10**12 + i)) for i in range(1000)]
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    finally:
        tracemalloc.stop()
    assert per_key < 200  # orjson's bytes: ~4,100 traced bytes each


def test_the_table_and_its_changelog_use_it():
    assert isinstance(journey_state.key_serializer, UserKey)
    assert isinstance(journey_state.changelog_topic.key_serializer, UserKey)

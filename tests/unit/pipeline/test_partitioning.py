import numpy as np
from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.partitioning import user_key, user_partition, user_partitions


def reference(user_id: int, partitions: int) -> int:
    """aiokafka's own default partitioner for the user's key."""
    return DefaultPartitioner()(user_key(user_id), list(range(partitions)), list(range(partitions)))


def test_vectorized_partitions_equal_aiokafkas_partitioner_for_ids_of_every_length():
    rng = np.random.default_rng(7)
    ids = np.concatenate(
        [rng.integers(10 ** (k - 1) if k > 1 else 0, 10**k, 300) for k in range(1, 19)]
        + [rng.integers(10**18, 2**63 - 1, 300, dtype=np.int64), np.array([0, 9, 10, 99, 100, 2**63 - 1])]
    )
    for partitions in (1, 3, 8, 12, 64):
        expected = np.array([reference(int(i), partitions) for i in ids])
        assert (user_partitions(ids, partitions) == expected).all(), partitions


def test_negative_ids_take_the_same_partition_as_their_key_would():
    ids = np.array([-1, -12345, -(10**15)], dtype=np.int64)
    assert user_partitions(ids, 8).tolist() == [reference(int(i), 8) for i in ids]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=1, max_value=100))
def test_one_user_partition_equals_the_murmur2_rule(user_id, partitions):
    expected = (murmur2(str(user_id).encode()) & 0x7FFFFFFF) % partitions
    assert user_partition(user_id, partitions) == expected
    assert user_partitions(np.array([user_id], dtype=np.int64), partitions)[0] == expected


def test_empty_input_gives_an_empty_answer():
    assert user_partitions(np.empty(0, dtype=np.int64), 8).shape == (0,)

import uuid
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest

from pipeline.explode import (
    BatchWriter, advance_offsets, assign_variants, batch_id, campaign_category, choose_languages,
    expected_messages, pack_codes, pack_ids, parse_batch_id, pending_batches, plan, unpack_codes, unpack_ids,
    variant_of,
)
from pipeline.partitioning import user_partitions
from schemas.messages import MessageBatch

RNG = np.random.default_rng(11)
IDS = np.unique(RNG.integers(10**12, 10**12 + 10**9, 100_000))


# ---------------------------------------------------------------- A/B variants


def test_variants_honour_the_weights_within_one_percent_on_100k_users():
    variants = [("A", 50), ("B", 30), ("C", 20)]
    got = assign_variants(42, IDS, variants)
    for name, weight in variants:
        share = float(np.mean(got == name))
        assert abs(share - weight / 100) < 0.01, (name, share)


def test_uneven_small_weights_are_honoured_too():
    got = assign_variants(9, IDS, [("ctrl", 95), ("test", 5)])
    assert abs(float(np.mean(got == "test")) - 0.05) < 0.01


def test_a_users_variant_is_the_same_in_every_run_and_in_any_subset():
    variants = [("A", 50), ("B", 50)]
    whole = assign_variants(42, IDS, variants)
    again = assign_variants(42, IDS.copy(), variants)
    assert (whole == again).all()
    subset = IDS[::7]
    assert (assign_variants(42, subset, variants) == whole[::7]).all()
    assert variant_of(42, int(IDS[3]), variants) == whole[3]


def test_the_assignment_is_pinned_so_restarts_and_new_releases_agree():
    # Fixed expectations: changing the hash would move running campaigns' users between variants.
    ids = np.array([1, 2, 3, 10**12 + 5, 2**62, 7, 8, 9], dtype=np.int64)
    assert assign_variants(1, ids, [("A", 50), ("B", 50)]).tolist() == ["A", "A", "B", "A", "B", "A", "A", "B"]


def test_different_campaigns_split_users_independently():
    a = assign_variants(1, IDS, [("A", 50), ("B", 50)]) == "A"
    b = assign_variants(2, IDS, [("A", 50), ("B", 50)]) == "A"
    both = float(np.mean(a & b))
    assert abs(both - 0.25) < 0.01


def test_no_ab_test_means_no_variant():
    assert assign_variants(1, IDS, []) is None
    assert variant_of(1, 5, []) is None


def test_non_positive_weights_are_refused():
    with pytest.raises(ValueError):
        assign_variants(1, IDS, [("A", 100), ("B", 0)])


# ---------------------------------------------------------------- languages, category, counts


def test_unknown_and_blank_languages_fall_back_to_the_default():
    codes, table = choose_languages(np.array([0, -1, 1, 2, 0]), ["fr", "", None], default="en")
    assert [table[c] for c in codes] == ["fr", "en", "en", "en", "fr"]
    assert table[0] == "en"


def test_category_is_the_first_template_category_else_promotional():
    assert campaign_category(["email", "sms"], {"email": None, "sms": "transactional"}) == "transactional"
    assert campaign_category(["email"], {}) == "promotional"


def test_expected_messages_count_every_recipient_on_every_channel():
    assert expected_messages(1000, ["email", "push"]) == 2000


# ---------------------------------------------------------------- batches


def test_every_user_is_in_exactly_one_batch_of_its_own_partition():
    cut = plan(IDS, 8, 500)
    parts = user_partitions(IDS, 8)
    seen = []
    for c in range(cut.chunks):
        for p, positions in cut.chunk(c):
            assert 0 < len(positions) <= 500
            assert (parts[positions] == p).all()
            assert (np.diff(IDS[positions]) > 0).all()  # ascending ids within a record
            seen.append(positions)
    allpos = np.concatenate(seen)
    assert len(allpos) == len(IDS) and len(np.unique(allpos)) == len(IDS)


def test_chunking_is_deterministic_and_only_a_partitions_last_record_is_short():
    a, b = plan(IDS, 8, 500), plan(IDS.copy(), 8, 500)
    assert a.chunks == b.chunks
    for c in range(a.chunks):
        for (pa, xa), (pb, xb) in zip(a.chunk(c), b.chunk(c), strict=True):
            assert pa == pb and (xa == xb).all()
            if c < a.chunks - 1 and len(xa) < 500:
                assert all(p != pa for p, _ in a.chunk(c + 1))


def test_an_empty_audience_has_no_chunks():
    assert plan(np.empty(0, dtype=np.int64), 8).chunks == 0


def test_a_resume_emits_what_the_checkpoint_and_the_topic_do_not_already_hold():
    cut = plan(IDS[:20_000], 4, 500)  # 5,000 users per partition: 10 chunks
    assert cut.chunks == pytest.approx(10, abs=1)
    already = {(3, 0), (3, 2), (4, 1)}  # written after the checkpoint, before the crash
    todo = pending_batches(cut, 3, already)
    assert todo[0] == (3, [1, 3])
    assert todo[1] == (4, [0, 2, 3])
    assert [c for c, _ in todo] == list(range(3, cut.chunks))
    emitted = {(c, p) for c, ps in todo for p in ps}
    before = {(c, p) for c in range(3) for p, _ in cut.chunk(c)}
    everything = {(c, p) for c in range(cut.chunks) for p, _ in cut.chunk(c)}
    assert emitted | already | before == everything
    assert not emitted & (already | before)


def test_a_finished_plan_has_nothing_pending():
    cut = plan(IDS[:5000], 8, 500)
    assert pending_batches(cut, cut.chunks, set()) == []


def test_batch_ids_round_trip_and_other_ids_are_not_mistaken_for_them():
    lid = uuid.uuid4()
    assert parse_batch_id(batch_id(lid, 12, 3)) == (str(lid), 12, 3)
    assert parse_batch_id(f"{lid}:12:3:email") is None
    assert parse_batch_id("whatever") is None


def test_records_are_valid_message_batches_with_variant_and_language():
    lid = uuid.uuid4()
    ids = IDS[:3000]
    variants = assign_variants(7, ids, [("A", 50), ("B", 50)])
    codes, table = choose_languages(np.arange(3000) % 3, ["fr", "de", "en"])
    writer = BatchWriter(launch_id=lid, campaign_id=7, category="promotional", transactional=False,
                         launched_at=datetime(2026, 1, 1, tzinfo=timezone.utc), user_ids=ids, variants=variants,
                         language_codes=codes, languages=table)
    cut = plan(ids, 8, 500)
    p, positions = cut.chunk(0)[0]
    bid, value = writer.record(0, p, positions)
    batch = MessageBatch.model_validate_json(value)
    assert batch.batch_id == bid == f"{lid}:0:{p}"
    assert batch.partition == p and batch.channel is None and batch.launch_id == lid
    assert [r.user_id for r in batch.recipients] == ids[positions].tolist()
    assert [r.variant for r in batch.recipients] == variants[positions].tolist()
    assert [r.language for r in batch.recipients] == [table[c] for c in codes[positions]]
    assert "not_before" not in orjson.loads(value)["recipients"][0]


# ---------------------------------------------------------------- packing, offsets


def test_packed_ids_and_codes_round_trip():
    assert (unpack_ids(pack_ids(IDS)) == IDS).all()
    assert len(unpack_ids(pack_ids(np.empty(0, dtype=np.int64)))) == 0
    codes = (np.arange(1000) % 5).astype(np.uint8)
    assert (unpack_codes(pack_codes(codes)) == codes).all()


def test_offsets_advance_past_the_last_acknowledged_record_only():
    assert advance_offsets({0: 10, 1: 5}, [(0, 12), (0, 11), (2, 0)]) == {0: 13, 1: 5, 2: 1}


# ---------------------------------------------------------------- runtime (pure parts)


def _row(**over):
    row = {"campaign_id": 5, "name": "n", "type": "immediate", "status": "active", "version": 3,
           "channels": ["email", "webhook"], "segment_id": 9, "launch_id": None,
           "content": orjson.dumps({"email": {"template_id": 1}, "webhook": {"url": "http://h/x", "payload": "{}"}}),
           "ab_test_config": orjson.dumps({"enabled": True, "variants": [{"id": "A", "weight": 60},
                                                                         {"id": "B", "weight": 40}]}),
           "budget": orjson.dumps({"max_spend": 12.5, "currency": "USD"})}
    return row | over


def test_a_campaign_runtime_carries_variants_budget_costs_category_and_webhook_url():
    from pipeline.campaign_state import runtime_from

    rt = runtime_from(_row(), {"email": {"category": "transactional"}}, {"email": 0.001, "webhook": 0.0})
    assert rt.variants == (("A", 60.0), ("B", 40.0))
    assert rt.budget is not None and rt.budget.max_spend == 12.5 and rt.budget.currency == "USD"
    assert rt.category == "transactional" and rt.transactional
    assert rt.webhook_url == "http://h/x"
    assert rt.unit_cost("email") == 0.001 and rt.unit_cost("sms") == 0.0


def test_a_disabled_ab_test_and_an_empty_budget_mean_none():
    from pipeline.campaign_state import runtime_from

    rt = runtime_from(_row(ab_test_config="{}", budget="{}"), {}, {})
    assert rt.variants == () and rt.budget is None and rt.category == "promotional" and not rt.transactional


def test_held_batches_go_back_to_their_outbox_or_to_message_requests_on_their_partition():
    from pipeline.control import held_destination

    assert held_destination({"channel": "sms", "partition": 4}) == ("outbox.sms", 4)
    assert held_destination({"channel": None, "partition": 2}) == ("message-requests", 2)


def test_a_cancelled_held_batch_counts_every_recipient_on_every_channel_it_was_for():
    from pipeline.control import cancelled_events

    batch = {"campaign_id": 5, "channel": None, "partition": 1, "step": "send",
             "recipients": [{"user_id": 1, "variant": "A"}, {"user_id": 2}]}
    events = cancelled_events(batch, ["email", "push"]).events
    assert sorted((e.user_id, e.channel) for e in events) == [(1, "email"), (1, "push"), (2, "email"), (2, "push")]
    assert all(e.status == "cancelled" and e.reason == "cancelled" for e in events)
    assert len(cancelled_events(batch | {"channel": "sms"}, ["email", "push"]).events) == 2


def test_a_launch_superseded_by_a_newer_one_is_skipped_without_a_dead_letter():
    from pipeline.explode import skipped, superseded

    launch = uuid.uuid4()
    assert not skipped(superseded(5, launch)).letter
    assert skipped("no segment 9").letter and skipped("no segment 9").state == "skipped"


def test_a_triggered_launch_or_one_without_a_segment_freezes_no_audience():
    from pipeline.explode import no_audience_reason

    assert "triggered" in no_audience_reason("triggered", 3)
    assert "segment" in no_audience_reason("immediate", None)
    assert no_audience_reason("immediate", 3) is None
    birthday = {"date_field": "attributes.birthday"}
    assert no_audience_reason("triggered", 3, birthday) is None  # a date trigger's run has its segment
    assert "segment" in no_audience_reason("triggered", None, birthday)
    assert "triggered" in no_audience_reason("triggered", 3, {"event": "signup"})


def test_a_launch_is_locked_by_a_stable_signed_64_bit_key():
    from pipeline.explode import lock_key

    launch = uuid.UUID("ffffffff-ffff-ffff-0000-000000000000")
    assert lock_key(launch) == -1 and lock_key(launch) == lock_key(uuid.UUID(str(launch)))


def test_windows_hold_about_the_wanted_recipients_and_a_resume_reaches_past_what_was_sent():
    from pipeline.explode import plan, windows

    cut = plan(np.arange(1, 4001, dtype=np.int64), 4, 100)  # 4 partitions of records of up to 100
    todo = [(c, [0, 1, 2, 3]) for c in range(10)]
    assert [len(w) for w in windows(todo, cut, 800)] == [2, 2, 2, 2, 2]  # 2 chunks of 4 × 100
    assert [len(w) for w in windows(todo, cut, 800, first_until=5)] == [6, 2, 2]
    assert windows([], cut, 800) == []


def test_an_event_triggered_launch_is_skipped_without_a_dead_letter():
    from pipeline.explode import no_audience_reason, skipped
    reason = no_audience_reason("triggered", None, {"event": "cart_abandoned"})
    assert reason is not None and skipped(reason).letter is False  # launching it starts listening: no error
    assert skipped("no segment 7").letter is True

"""The lookalike model on synthetic audiences: it must find users like a clearly
defined seed, and admit (quality near chance) when the seed is random."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from pipeline.lookalike import Feature, LookalikeError, encode, plan_features, train_and_rank

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def audience(n: int = 6_000, seed: int = 7) -> pl.DataFrame:
    """A frame shaped like ``AudienceStore.frame()``, with nulls where real data has them."""
    rng = np.random.default_rng(seed)
    bought = rng.random(n) < 0.6
    purchases = np.where(bought, rng.poisson(2.0, n), 0).astype(np.uint32)
    last_purchase = [NOW - timedelta(days=float(d)) if b else None for b, d in zip(bought, rng.uniform(0, 400, n))]
    return pl.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype=np.int64) + 10**12,
            "country": rng.choice(["US", "DE", "FR", "GB", "AT", None], n, p=[0.4, 0.2, 0.15, 0.15, 0.05, 0.05]),
            "language": rng.choice(["en", "de", "fr"], n),
            "timezone": rng.choice(["UTC", "Europe/Berlin", "America/New_York"], n),
            "has_email": rng.random(n) < 0.9,
            "has_phone": rng.random(n) < 0.5,
            "has_push": rng.random(n) < 0.3,
            "created_at": [NOW - timedelta(days=float(d)) for d in rng.uniform(1, 1000, n)],
            "attr.plan": rng.choice(["free", "basic", "premium", None], n, p=[0.5, 0.25, 0.2, 0.05]),
            "attr.lifetime_value": np.where(rng.random(n) < 0.9, rng.gamma(2.0, 50.0, n), np.nan),
            "attr.age": rng.integers(18, 80, n).astype(np.float64),
            "attr.email": [f"user{i}@example.com" for i in range(n)],  # an identifier, not a trait
            "event.purchase.count": purchases,
            "event.purchase.last": last_purchase,
            "event.product_viewed.count": rng.poisson(5.0, n).astype(np.uint32),
        },
        schema_overrides={"created_at": pl.Datetime("us", "UTC"), "event.purchase.last": pl.Datetime("us", "UTC")},
    ).with_columns(pl.col("attr.lifetime_value").fill_nan(None))


def heavy_premium_buyers(frame: pl.DataFrame) -> np.ndarray:
    """The rule behind the separable seed: premium plan in DE or AT with at least 2 purchases."""
    rule = (
        (pl.col("attr.plan") == "premium")
        & pl.col("country").is_in(["DE", "AT"])
        & (pl.col("event.purchase.count") >= 2)
    )
    return frame.filter(rule).get_column("user_id").to_numpy()


def test_separable_seed_is_found_with_high_quality() -> None:
    frame = audience()
    matching = heavy_premium_buyers(frame)
    rng = np.random.default_rng(1)
    seed = np.sort(rng.choice(matching, size=len(matching) * 2 // 3, replace=False))
    hidden = np.setdiff1d(matching, seed)

    result = train_and_rank(frame, seed, size=len(hidden), now=NOW)

    found = np.isin(result.user_ids, hidden).mean()
    assert found > 0.8, f"only {found:.0%} of the top-ranked users match the seed's rule"
    quality = result.quality
    assert quality["recall_at_size"] > 0.8
    assert quality["auc"] > 0.95
    assert quality["lift"] > 5 * 0.8  # far above chance
    assert quality["random_recall_at_size"] < 0.1


def test_random_seed_scores_near_chance() -> None:
    frame = audience()
    rng = np.random.default_rng(2)
    ids = frame.get_column("user_id").to_numpy()
    seed = np.sort(rng.choice(ids, size=1_000, replace=False))

    quality = train_and_rank(frame, seed, size=800, now=NOW).quality

    assert 0.4 < quality["auc"] < 0.6
    assert 0.6 < quality["lift"] < 1.4
    assert abs(quality["recall_at_size"] - quality["random_recall_at_size"]) < 0.1


def test_ranking_returns_size_distinct_non_members() -> None:
    frame = audience(n=2_000)
    seed = frame.get_column("user_id").to_numpy()[::7]

    result = train_and_rank(frame, seed, size=300, now=NOW)

    assert len(result.user_ids) == 300
    assert len(np.unique(result.user_ids)) == 300
    assert not np.isin(result.user_ids, seed).any()
    assert np.isin(result.user_ids, frame.get_column("user_id").to_numpy()).all()
    assert result.user_ids.dtype == np.int64


def test_size_beyond_the_non_members_returns_every_non_member() -> None:
    frame = audience(n=200)
    ids = frame.get_column("user_id").to_numpy()
    seed = ids[:150]

    result = train_and_rank(frame, seed, size=1_000, now=NOW)

    assert sorted(result.user_ids.tolist()) == sorted(ids[150:].tolist())


def test_same_inputs_give_the_same_ranking() -> None:
    frame = audience(n=1_500)
    seed = heavy_premium_buyers(frame)

    first = train_and_rank(frame, seed, size=50, now=NOW)
    second = train_and_rank(frame, seed, size=50, now=NOW)

    assert first.user_ids.tolist() == second.user_ids.tolist()
    assert first.quality == second.quality


def test_seed_members_unknown_to_the_store_are_ignored() -> None:
    frame = audience(n=1_000)
    known = frame.get_column("user_id").to_numpy()[:40]
    unknown = np.arange(1, 500, dtype=np.int64)  # ids the frame does not hold

    result = train_and_rank(frame, np.concatenate([unknown, known]), size=10, now=NOW)

    assert result.quality["seed_members"] == 40


def test_a_seed_too_small_to_learn_from_is_refused() -> None:
    frame = audience(n=500)
    with pytest.raises(LookalikeError, match="at least 10"):
        train_and_rank(frame, frame.get_column("user_id").to_numpy()[:9], size=10, now=NOW)


def test_a_seed_holding_everyone_is_refused() -> None:
    frame = audience(n=100)
    with pytest.raises(LookalikeError, match="nobody to rank"):
        train_and_rank(frame, frame.get_column("user_id").to_numpy(), size=10, now=NOW)


def test_features_skip_identifiers_and_empty_columns_and_keep_traits() -> None:
    frame = audience(n=1_000).with_columns(pl.lit(None, dtype=pl.Float64).alias("attr.never_set"))

    kinds = {f.column: f.kind for f in plan_features(frame)}

    assert "user_id" not in kinds
    assert "attr.email" not in kinds
    assert "attr.never_set" not in kinds
    assert kinds["country"] == "category"
    assert kinds["attr.plan"] == "category"
    assert kinds["has_push"] == "boolean"
    assert kinds["attr.lifetime_value"] == "number"
    assert kinds["event.purchase.count"] == "number"
    assert kinds["event.purchase.last"] == "days_ago"


def test_features_skip_constant_columns_and_values_too_rare_to_bin() -> None:
    n = 3_000
    rare = np.full(n, np.nan)
    rare[:3] = [1.0, 2.0, 3.0]  # an attribute 3 users have: early stopping's split could leave it empty
    frame = audience(n=n).with_columns(
        pl.Series("attr.rare", rare).fill_nan(None),
        pl.lit(7.0).alias("attr.constant"),
        pl.Series("attr.mostly_one", np.where(np.arange(n) < 4, 2.0, 1.0)),
    )

    kinds = {f.column: f.kind for f in plan_features(frame)}

    assert {"attr.rare", "attr.constant", "attr.mostly_one"}.isdisjoint(kinds)
    assert kinds["attr.age"] == "number"
    seed = heavy_premium_buyers(frame)
    assert train_and_rank(frame, seed, 100, NOW).quality["auc"] > 0.9  # trains with those columns present


def test_encoding_turns_times_into_days_ago_and_keeps_missing_values_missing() -> None:
    frame = pl.DataFrame(
        {
            "country": ["DE", None, "XX"],
            "seen": [NOW - timedelta(days=3), None, NOW.replace(tzinfo=None) - timedelta(hours=12)],
        }
    ).with_columns(pl.col("seen").cast(pl.Datetime("us")))  # naive: read as UTC
    features = [Feature("country", "category", ("DE", "FR")), Feature("seen", "days_ago")]

    matrix = encode(frame, features, NOW)

    assert matrix[0].tolist() == [0.0, 3.0]
    assert np.isnan(matrix[1]).all()
    assert matrix[2].tolist() == [2.0, 0.5]  # an unlisted country is the "other" code


def test_spare_users_extend_the_ranking_without_changing_it_or_its_quality() -> None:
    frame = audience(n=1_500)
    seed = heavy_premium_buyers(frame)

    exact = train_and_rank(frame, seed, size=50, now=NOW)
    padded = train_and_rank(frame, seed, size=50, now=NOW, spare=20)

    assert len(padded.user_ids) == 70
    assert padded.user_ids[:50].tolist() == exact.user_ids.tolist()
    assert padded.quality == exact.quality

"""Lookalike audiences: rank the users outside a seed segment by how much they resemble it.

A marketer has a segment that works (buyers of a product, say) and wants more
people like them. The seed's members are the positives, a random sample of
everyone else the negatives, and a gradient-boosted tree classifier
(scikit-learn's ``HistGradientBoostingClassifier``) learns what sets the seed
apart from the audience store's columns: country, language, time zone and
string attributes as categories, numeric and boolean attributes as they are,
event counts, and how many days ago each dated column (sign-up, ISO-date
attributes, first and last time of each event) lies. The "negatives" are
really unlabelled: some of them look like the seed, and they are exactly the
users the ranking should bring up, which is why the model scores every
non-member, sampled or not.

How good is the ranking? A fifth of the seed is held out before training. A
model that learned something ranks those held-out members near the top among
users it never saw; one that learned nothing ranks them like a random draw.
``Lookalike.quality`` says so in figures:

    recall_at_size         share of held-out seed members within the top ``size`` of the
                           evaluation pool (held-out members + non-members not used in training)
    random_recall_at_size  the same for a random order: size / pool
    lift                   recall / random recall (1.0 = no better than chance)
    auc                    chance that a held-out member outranks an unseen non-member

Training is capped (``max_positives``, ``max_negatives``) and scoring runs in
chunks, so a million-user store ranks in seconds with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

MIN_SEED_MEMBERS = 10
MAX_CATEGORIES = 64  # per column; rarer values share one "other" code (trees bin at most 255)
# A column teaches something only if at least this many training rows hold a value other than its
# most common one. Below that the trees' early-stopping split (10 % of the rows, at random) can leave
# the column constant or empty in what they bin, and binning a column with fewer than two distinct
# values fails (seen with a test attribute that 3 of 2,400 users had).
MIN_VARIED_ROWS = 5
_SCORE_CHUNK_ROWS = 100_000
_DAY_S = 86_400.0

FeatureKind = Literal["number", "boolean", "days_ago", "category"]


class LookalikeError(ValueError):
    """The seed cannot teach a model anything (too few members, or nobody outside it)."""


@dataclass(frozen=True)
class Feature:
    """One model input taken from one column of ``AudienceStore.frame()``."""

    column: str
    kind: FeatureKind
    categories: tuple[str, ...] = ()  # category codes 0..k-1; any other value is code k

    def expression(self, now: datetime) -> pl.Expr:
        col = pl.col(self.column)
        if self.kind == "category":
            codes = {value: float(code) for code, value in enumerate(self.categories)}
            other = float(len(self.categories))
            coded = col.cast(pl.Utf8).replace_strict(codes, default=other, return_dtype=pl.Float64)
            # Missing stays missing (NaN): the trees learn where to send it.
            return pl.when(col.is_null()).then(None).otherwise(coded).alias(self.column)
        if self.kind == "days_ago":
            return ((pl.lit(now) - col).dt.total_seconds(fractional=True) / _DAY_S).alias(self.column)
        return col.cast(pl.Float64).alias(self.column)


@dataclass(frozen=True)
class Lookalike:
    """The ranked non-members (best first) and how well the model found held-out seed members."""

    user_ids: np.ndarray
    quality: dict[str, Any] = field(default_factory=dict)


def plan_features(frame: pl.DataFrame, max_categories: int = MAX_CATEGORIES) -> list[Feature]:
    """The features the store's columns give, skipping identifiers and columns that say nothing
    (empty, constant, or different in fewer than MIN_VARIED_ROWS rows).

    A string column with a distinct value for most users (an e-mail, a name) is
    an identifier, not a trait: it could only teach the model who the seed's
    members are, never what they are like.
    """
    rows = frame.height
    features: list[Feature] = []
    for name, dtype in frame.schema.items():
        if name == "user_id":
            continue
        column = frame.get_column(name)
        if not _varies(column):
            continue
        if dtype in (pl.Utf8, pl.Categorical) or isinstance(dtype, pl.Enum):
            counts = column.cast(pl.Utf8).drop_nulls().value_counts(sort=True, name="n")
            if counts.height > max(max_categories, rows // 2):
                continue
            top = tuple(counts.get_column(name).head(max_categories).to_list())
            features.append(Feature(name, "category", top))
        elif dtype == pl.Boolean:
            features.append(Feature(name, "boolean"))
        elif isinstance(dtype, pl.Datetime):
            features.append(Feature(name, "days_ago"))  # naive datetimes are read as UTC
        elif dtype.is_numeric():
            features.append(Feature(name, "number"))
    return features


def _varies(column: pl.Series) -> bool:
    """Whether at least MIN_VARIED_ROWS rows hold a value other than the column's most common one."""
    filled = column.drop_nulls()
    if filled.dtype.is_float():
        filled = filled.drop_nans()
    if filled.len() < MIN_VARIED_ROWS:
        return False
    most_common = filled.value_counts(sort=True, name="n").get_column("n")[0]
    return filled.len() - most_common >= MIN_VARIED_ROWS


def encode(frame: pl.DataFrame, features: list[Feature], now: datetime) -> np.ndarray:
    """The feature matrix (float64, NaN for missing) of ``frame``'s rows."""
    if not features:
        return np.zeros((frame.height, 0))
    naive = [f.column for f in features if f.kind == "days_ago" and frame.schema[f.column].time_zone is None]
    prepared = frame.with_columns(pl.col(name).dt.replace_time_zone("UTC") for name in naive)
    encoded = prepared.select(f.expression(now) for f in features)
    return encoded.to_numpy().astype(np.float64, copy=False)


def _chunks(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _rank(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions ordered best first; equal scores in random order, so ties favour nobody."""
    return np.lexsort((rng.random(len(scores)), -scores))


def train_and_rank(
    frame: pl.DataFrame, seed_ids: np.ndarray, size: int, now: datetime, spare: int = 0, **options: Any
) -> Lookalike:
    """The ``size`` users outside ``seed_ids`` most like its members, with the model's quality.

    ``frame`` is ``AudienceStore.frame()`` (one row per user); seed members
    missing from it are ignored. Raises ``LookalikeError`` if fewer than
    ``MIN_SEED_MEMBERS`` seed members are in the frame or nobody is outside it.
    ``spare`` more users are ranked beyond ``size`` (best first, after the
    first ``size``) for a caller that may have to skip some; quality is
    measured at ``size``. Other options are ``_train_and_rank``'s keywords.

    One OpenMP thread: the trees' thread pool spins while it waits, and on a
    small machine shared with the API's event loop and the pipeline, two
    spinning threads made a 2,000-row fit 70 times slower than one thread.
    """
    with threadpool_limits(limits=1, user_api="openmp"):
        return _train_and_rank(frame, seed_ids, size, now, spare=spare, **options)


def _train_and_rank(
    frame: pl.DataFrame,
    seed_ids: np.ndarray,
    size: int,
    now: datetime,
    *,
    spare: int = 0,
    holdout_share: float = 0.2,
    max_positives: int = 50_000,
    negatives_per_positive: int = 3,
    min_negatives: int = 2_000,
    max_negatives: int = 100_000,
    random_state: int = 0,
) -> Lookalike:
    if size < 1:
        raise ValueError("size must be at least 1")
    rng = np.random.default_rng(random_state)
    user_ids = frame.get_column("user_id").to_numpy()
    in_seed = np.isin(user_ids, seed_ids)
    positives = np.flatnonzero(in_seed)
    candidates = np.flatnonzero(~in_seed)
    if len(positives) < MIN_SEED_MEMBERS:
        raise LookalikeError(
            f"the seed has {len(positives)} members known to the audience store;"
            f" a lookalike needs at least {MIN_SEED_MEMBERS}"
        )
    if len(candidates) < 2:
        raise LookalikeError("nearly every known user is already in the seed; there is nobody to rank")

    positives = rng.permutation(positives)
    held_count = max(2, round(holdout_share * len(positives)))
    held_out, train_positives = positives[:held_count], positives[held_count:][:max_positives]
    # Keep at least half the candidates unseen by training, so the quality is measured on new users.
    wanted = min(max(negatives_per_positive * len(train_positives), min_negatives), max_negatives)
    negatives = rng.choice(candidates, size=min(wanted, len(candidates) // 2), replace=False)

    training_rows = np.concatenate([train_positives, negatives])
    training = frame[training_rows]
    # Planned on the training rows: a column they never fill can teach nothing (and trees cannot bin it).
    features = plan_features(training)
    x_train = encode(training, features, now)
    y_train = np.concatenate([np.ones(len(train_positives)), np.zeros(len(negatives))])
    model = HistGradientBoostingClassifier(
        max_iter=100,
        learning_rate=0.1,
        max_leaf_nodes=31,
        l2_regularization=1.0,
        categorical_features=[f.kind == "category" for f in features] or None,
        early_stopping=len(training_rows) >= 2_000,
        random_state=random_state,
    )
    model.fit(x_train, y_train)

    scored = np.concatenate([candidates, held_out])
    scores = np.empty(len(scored))
    for chunk in _chunks(np.arange(len(scored)), _SCORE_CHUNK_ROWS):
        scores[chunk] = model.predict_proba(encode(frame[scored[chunk]], features, now))[:, 1]
    candidate_scores, held_scores = scores[: len(candidates)], scores[len(candidates) :]

    unseen = ~np.isin(candidates, negatives)
    pool_scores = np.concatenate([candidate_scores[unseen], held_scores])
    pool_is_seed = np.concatenate([np.zeros(unseen.sum(), dtype=bool), np.ones(len(held_scores), dtype=bool)])
    top = min(size, len(pool_scores))
    found = int(pool_is_seed[_rank(pool_scores, rng)[:top]].sum())
    recall = found / len(held_out)
    random_recall = top / len(pool_scores)

    chosen = candidates[_rank(candidate_scores, rng)[: size + spare]]
    quality = {
        "model": "HistGradientBoostingClassifier",
        "features": len(features),
        "seed_members": int(len(positives)),
        "training_positives": int(len(train_positives)),
        "training_negatives": int(len(negatives)),
        "held_out_seed_members": int(len(held_out)),
        "evaluation_pool": int(len(pool_scores)),
        "recall_at_size": round(recall, 4),
        "random_recall_at_size": round(random_recall, 4),
        "lift": round(recall / random_recall, 3),
        "auc": round(float(roc_auc_score(pool_is_seed, pool_scores)), 4),
    }
    return Lookalike(user_ids=user_ids[chosen].astype(np.int64), quality=quality)

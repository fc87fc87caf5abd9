"""Money in API answers: rounded half up to the cent, written with at most two decimals."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.money import money_json, to_cents


def test_a_float_counter_from_redis_comes_out_to_the_cent():
    assert to_cents(b"0.07019999999999992") == Decimal("0.07")
    assert orjson.dumps({"budget_spent": money_json(b"0.07019999999999992")}) == b'{"budget_spent":0.07}'


@pytest.mark.parametrize("value, cents", [
    (Decimal("7.5000"), Decimal("7.50")), (Decimal("0.0050"), Decimal("0.01")), (Decimal("0.0049"), Decimal("0.00")),
    ("2.675", Decimal("2.68")), (2.675, Decimal("2.68")), (-1.005, Decimal("-1.01")), (7500, Decimal("7500.00")),
    (0, Decimal("0.00")), (b"175000", Decimal("175000.00")),
])
def test_halves_round_up_away_from_zero(value, cents):
    assert to_cents(value) == cents


def test_none_stays_none_and_nonsense_is_refused():
    assert to_cents(None) is None and money_json(None) is None
    for bad in ("lots", b"nan", float("inf")):
        with pytest.raises(ValueError):
            to_cents(bad)


@given(st.integers(min_value=-(2**53) // 100, max_value=2**53 // 100))
def test_any_whole_number_of_cents_is_written_with_at_most_two_decimals(cents):
    amount = Decimal(cents).scaleb(-2)
    text = orjson.dumps(money_json(amount)).decode()
    assert Decimal(text) == amount
    assert "e" not in text.lower()
    assert "." not in text or len(text.split(".")[1]) <= 2


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_a_summed_float_never_answers_with_more_than_two_decimals(value):
    text = orjson.dumps(money_json(value)).decode()
    assert "." not in text or len(text.split(".")[1]) <= 2

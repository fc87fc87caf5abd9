"""Money in API answers: exact decimal amounts, to the cent.

Amounts are kept at a finer grain where they are computed (NUMERIC(18, 4) in
PostgreSQL; a float counter in Redis that HINCRBYFLOAT adds each send's cost
to) and rounded once, here, as an answer is built: half up to the cent, then
written as a JSON number with at most two decimals::

    b"0.07019999999999992"  ->  Decimal("0.07")  ->  0.07

A float is what carries it into JSON: orjson writes the shortest text that
reads back as the same float, and for a whole number of cents below 2**53 / 100
(90 trillion) that text has at most two decimals.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")


def to_cents(value: Decimal | float | int | str | bytes | None) -> Decimal | None:
    """``value`` as a Decimal rounded half up to the cent (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    try:
        # str() of a float is its shortest round-trip text: 0.1 is 0.1, not 0.1000000000000000055...
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount of money: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not an amount of money: {value!r}")
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def money_json(value: Decimal | float | int | str | bytes | None) -> float | None:
    """``value`` to the cent, as the number an API answer carries (at most two decimals in JSON)."""
    cents = to_cents(value)
    return None if cents is None else float(cents)

"""Money: integer minor units, checked ranges, currency rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from finmesh.platform.errors import InvalidArgument
from finmesh.platform.money import MAX_MINOR_UNITS, Money, checked, parse_amount, validate_amount


def test_parse_amount_accepts_positive_known_currency() -> None:
    """A positive amount in a supported currency parses to exact integers."""
    assert parse_amount("CNY", 1) == Money("CNY", 1)


@pytest.mark.parametrize(
    ("currency", "units", "fields"),
    [
        ("CNY", 0, ["amount.minor_units"]),
        ("CNY", -1, ["amount.minor_units"]),
        ("CNY", MAX_MINOR_UNITS + 1, ["amount.minor_units"]),
        ("cny", 5, ["amount.currency_code"]),
        ("", 0, ["amount.currency_code", "amount.minor_units"]),
    ],
)
def test_bad_amounts_name_every_bad_field(currency: str, units: int, fields: list[str]) -> None:
    """Every problem is reported at once, by field."""
    assert [v.field for v in validate_amount(currency, units)] == fields
    with pytest.raises(InvalidArgument):
        parse_amount(currency, units)


@given(st.integers(-MAX_MINOR_UNITS, MAX_MINOR_UNITS), st.integers(-MAX_MINOR_UNITS, MAX_MINOR_UNITS))
def test_addition_is_exact_or_refused(a: int, b: int) -> None:
    """Sums are exact integers; a sum outside the range raises rather than wrapping."""
    if abs(a + b) <= MAX_MINOR_UNITS:
        assert (Money("CNY", a) + Money("CNY", b)).minor_units == a + b
    else:
        with pytest.raises(OverflowError):
            checked(a + b)


def test_currencies_never_mix() -> None:
    with pytest.raises(ValueError, match="currency mismatch"):
        Money("CNY", 1) + Money("USD", 1)

"""GB 11643 identity numbers: check digit, real dates, adulthood."""

from __future__ import annotations

from datetime import date

import pytest

from finmesh.identity.domain.id_number import IdNumberError, check_char, parse_id_number

TODAY = date(2026, 11, 26)


def test_valid_number_parses_with_birth_date() -> None:
    parsed = parse_id_number("11010519491231002X", TODAY)
    assert parsed.birth_date == date(1949, 12, 31)


def test_lower_case_x_is_normalised() -> None:
    """A lower-case check character is the same number; it is stored upper-case."""
    assert parse_id_number("11010519491231002x", TODAY).value == "11010519491231002X"


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("110105194912310021", "check digit"),
        ("11010519491231002", "18 characters"),
        ("110105194902300021", "calendar date"),  # 30 February
        ("1101051949123100２X", "17 digits"),  # a full-width digit
    ],
)
def test_invalid_numbers_are_refused_with_reason(number: str, why: str) -> None:
    with pytest.raises(IdNumberError, match=why):
        parse_id_number(number, TODAY)


def test_under_18_is_refused_as_underage() -> None:
    first17 = "11010520100101001"
    with pytest.raises(IdNumberError) as refused:
        parse_id_number(first17 + check_char(first17), TODAY)
    assert refused.value.reason == "UNDERAGE"


def test_eighteenth_birthday_is_adult() -> None:
    first17 = "11010520081126001"
    assert parse_id_number(first17 + check_char(first17), TODAY).age_on(TODAY) == 18

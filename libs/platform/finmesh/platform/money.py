"""Exact money: integer minor units in ISO 4217 currencies, with overflow-checked arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

from finmesh.platform.errors import FieldViolation, InvalidArgument

# Currencies finmesh accepts, with their minor-unit exponent (ISO 4217).
CURRENCIES: dict[str, int] = {"CNY": 2, "HKD": 2, "USD": 2, "EUR": 2, "JPY": 0, "GBP": 2, "SGD": 2}

# Balances and amounts fit a signed 64-bit column with room for sums of two.
MAX_MINOR_UNITS = 2**62


@dataclass(frozen=True, order=True)
class Money:
    currency: str
    minor_units: int

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.currency, checked(self.minor_units + other.minor_units))

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.currency, checked(self.minor_units - other.minor_units))

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"currency mismatch: {self.currency} vs {other.currency}")


def checked(minor_units: int) -> int:
    if not -MAX_MINOR_UNITS <= minor_units <= MAX_MINOR_UNITS:
        raise OverflowError("amount outside the supported range")
    return minor_units


def validate_currency(code: str, field: str = "currency_code") -> list[FieldViolation]:
    if code not in CURRENCIES:
        return [FieldViolation(field, f"unsupported currency {code[:8]!r}; expected one of {sorted(CURRENCIES)}")]
    return []


def validate_amount(currency: str, minor_units: int, field: str = "amount") -> list[FieldViolation]:
    """Violations for an amount to move: known currency, positive, within range."""
    problems = validate_currency(currency, f"{field}.currency_code")
    if minor_units <= 0:
        problems.append(FieldViolation(f"{field}.minor_units", "must be positive"))
    elif minor_units > MAX_MINOR_UNITS:
        problems.append(FieldViolation(f"{field}.minor_units", f"must be at most {MAX_MINOR_UNITS}"))
    return problems


def parse_amount(currency: str, minor_units: int, field: str = "amount") -> Money:
    problems = validate_amount(currency, minor_units, field)
    if problems:
        raise InvalidArgument(problems)
    return Money(currency, minor_units)

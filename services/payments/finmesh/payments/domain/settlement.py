"""Settlement arithmetic: gross, fees (rate + fixed), risk-reserve share and net, in integer minor units.

Rates are basis points (1 bp = 0.01 %) so no float ever touches money.
Rounding is per batch, not per payment, so rounding errors do not pile up:
- fee: the rate part rounds half up (the platform's share of a half fen is
  charged), plus the fixed fee per payment;
- reserve: rounds down (the merchant keeps the fraction);
- fees are capped at gross and the reserve at what fees leave, so net is
  never negative and gross = fees + reserve + net always holds.
"""

from __future__ import annotations

from dataclasses import dataclass

BASIS_POINTS = 10_000


@dataclass(frozen=True)
class FeeSchedule:
    rate_bp: int
    fixed_minor_units: int
    reserve_bp: int

    def __post_init__(self) -> None:
        if not (0 <= self.rate_bp <= BASIS_POINTS and 0 <= self.reserve_bp <= BASIS_POINTS):
            raise ValueError("basis points must be within 0..10000")
        if self.fixed_minor_units < 0:
            raise ValueError("fixed fee must not be negative")


@dataclass(frozen=True)
class Split:
    gross: int
    fees: int
    reserve: int
    net: int
    payment_count: int


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def split(gross: int, payment_count: int, schedule: FeeSchedule) -> Split:
    if gross < 0 or payment_count < 0:
        raise ValueError("gross and count must not be negative")
    fees = min(
        gross, round_half_up(gross * schedule.rate_bp, BASIS_POINTS) + schedule.fixed_minor_units * payment_count
    )
    reserve = min(gross - fees, gross * schedule.reserve_bp // BASIS_POINTS)
    return Split(gross=gross, fees=fees, reserve=reserve, net=gross - fees - reserve, payment_count=payment_count)

"""Per-tier payment limits: single payment, daily amount, daily count (integer minor units)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from finmesh.platform.errors import FailedPrecondition


@dataclass(frozen=True)
class Limits:
    single: int
    daily_amount: int
    daily_count: int


@dataclass(frozen=True)
class Usage:
    """What a user has already paid today in one currency."""

    amount: int = 0
    count: int = 0


class LimitPolicy:
    """Limits per (tier, currency); an unknown tier gets the strictest limits configured for the currency.

    A currency with no configured limits at all is refused: failing closed is
    safer than an unlimited currency nobody thought about.
    """

    def __init__(self, table: dict[str, dict[str, Limits]]) -> None:
        self._table = table

    def limits_for(self, tier: str, currency: str) -> Limits | None:
        by_currency = self._table.get(tier)
        if by_currency is not None and currency in by_currency:
            return by_currency[currency]
        configured = [row[currency] for row in self._table.values() if currency in row]
        if not configured:
            return None
        return Limits(
            single=min(limits.single for limits in configured),
            daily_amount=min(limits.daily_amount for limits in configured),
            daily_count=min(limits.daily_count for limits in configured),
        )

    def check(self, tier: str, currency: str, amount: int, usage: Usage) -> Usage:
        """The usage after this payment, or LIMIT_EXCEEDED naming the limit it breaks."""
        limits = self.limits_for(tier, currency)
        if limits is None:
            raise FailedPrecondition("LIMIT_EXCEEDED", f"no payment limits are configured for {currency}",
                                     limit="currency", tier=tier)
        if amount > limits.single:
            raise _exceeded("single", tier, limits.single)
        if usage.amount + amount > limits.daily_amount:
            raise _exceeded("daily_amount", tier, limits.daily_amount)
        if usage.count + 1 > limits.daily_count:
            raise _exceeded("daily_count", tier, limits.daily_count)
        return Usage(usage.amount + amount, usage.count + 1)


def _exceeded(limit: str, tier: str, value: int) -> FailedPrecondition:
    return FailedPrecondition("LIMIT_EXCEEDED", f"the {limit.replace('_', ' ')} limit of tier {tier} is {value}",
                              limit=limit, tier=tier, limit_value=str(value))


def limit_day(moment: datetime, utc_offset_minutes: int) -> str:
    """The calendar day (YYYY-MM-DD) daily limits count in: China has one fixed offset (UTC+8, no DST)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(timezone(timedelta(minutes=utc_offset_minutes))).date().isoformat()


# Defaults in CNY fen, by risk tier (identity's low / medium / high).
DEFAULT_LIMITS: dict[str, dict[str, Limits]] = {
    "low": {"CNY": Limits(single=5_000_000, daily_amount=20_000_000, daily_count=200)},
    "medium": {"CNY": Limits(single=2_000_000, daily_amount=5_000_000, daily_count=100)},
    "high": {"CNY": Limits(single=500_000, daily_amount=1_000_000, daily_count=20)},
}

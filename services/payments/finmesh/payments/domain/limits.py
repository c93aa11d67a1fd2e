"""Per-tier payment limits (single payment, daily amount, daily count) and caps on one top-up or payout.

All in integer minor units. Top-ups and payouts are capped twice: by the
bank (whatever the account) and, for customer wallets, by the owner's tier.
A bank's caps are configured under the name of the payment channel it serves
(FINMESH_CHANNEL_CAPS); refusals name it as `channel`, as the contract does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.money import CURRENCIES

# What a cap bounds: one top-up (money in) or one payout (money out).
TOP_UP = "top_up"
PAYOUT = "payout"
# The entry that covers banks (and currencies) the configuration does not name.
ANY_BANK = "*"


@dataclass(frozen=True)
class Limits:
    single: int
    daily_amount: int
    daily_count: int
    # The most one top-up and one payout of a wallet may move; a table that leaves them out caps both at
    # `single` (money in or out of a wallet is held to what it may pay at once).
    top_up: int | None = None
    payout: int | None = None

    def cap(self, operation: str) -> int:
        value = self.top_up if operation == TOP_UP else self.payout
        return self.single if value is None else value


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
            top_up=min(limits.cap(TOP_UP) for limits in configured),
            payout=min(limits.cap(PAYOUT) for limits in configured),
        )

    def check(self, tier: str, currency: str, amount: int, usage: Usage) -> Usage:
        """The usage after this payment, or LIMIT_EXCEEDED naming the limit it breaks."""
        limits = self.limits_for(tier, currency)
        if limits is None:
            raise FailedPrecondition(
                "LIMIT_EXCEEDED", f"no payment limits are configured for {currency}", limit="currency", tier=tier
            )
        if amount > limits.single:
            raise _exceeded("single", tier, limits.single)
        if usage.amount + amount > limits.daily_amount:
            raise _exceeded("daily_amount", tier, limits.daily_amount)
        if usage.count + 1 > limits.daily_count:
            raise _exceeded("daily_count", tier, limits.daily_count)
        return Usage(usage.amount + amount, usage.count + 1)


@dataclass(frozen=True)
class BankCaps:
    """The most one top-up and one payout through a bank may move, in one currency."""

    top_up: int
    payout: int

    def cap(self, operation: str) -> int:
        return self.top_up if operation == TOP_UP else self.payout


class BankCapPolicy:
    """Caps on a single top-up or payout: the bank's for every account, the tier's for customer wallets.

    Checked before the bank is asked. Both fail closed, as payment limits do: a bank and currency
    without a cap (its own entry or the "*" entry) is refused, and so is a wallet in a currency no tier
    has limits for.
    """

    def __init__(self, banks: dict[str, dict[str, BankCaps]], tiers: LimitPolicy) -> None:
        self._banks = banks  # by the payment channel each serves
        self._tiers = tiers

    def check(self, operation: str, channel: str, currency: str, amount: int, tier: str | None) -> None:
        """Refuse LIMIT_EXCEEDED naming the cap `amount` breaks; `tier` None: not a wallet, no tier cap."""
        caps = self._banks.get(channel, {}).get(currency) or self._banks.get(ANY_BANK, {}).get(currency)
        if caps is None:
            raise FailedPrecondition(
                "LIMIT_EXCEEDED",
                f"no {_words(operation)} cap is configured for {currency} through this channel",
                limit=operation,
                scope="channel",
                channel=channel,
            )
        if amount > caps.cap(operation):
            raise FailedPrecondition(
                "LIMIT_EXCEEDED",
                f"the {_words(operation)} cap of channel {channel} is {caps.cap(operation)}",
                limit=operation,
                scope="channel",
                channel=channel,
                limit_value=str(caps.cap(operation)),
            )
        if tier is None:
            return
        limits = self._tiers.limits_for(tier, currency)
        if limits is None:
            raise FailedPrecondition(
                "LIMIT_EXCEEDED", f"no limits are configured for {currency}", limit=operation, scope="tier", tier=tier
            )
        if amount > limits.cap(operation):
            raise FailedPrecondition(
                "LIMIT_EXCEEDED",
                f"the {_words(operation)} cap of tier {tier} is {limits.cap(operation)}",
                limit=operation,
                scope="tier",
                tier=tier,
                limit_value=str(limits.cap(operation)),
            )


def _words(name: str) -> str:
    return name.replace("_", " ").replace("top up", "top-up")


def _exceeded(limit: str, tier: str, value: int) -> FailedPrecondition:
    return FailedPrecondition(
        "LIMIT_EXCEEDED",
        f"the {limit.replace('_', ' ')} limit of tier {tier} is {value}",
        limit=limit,
        tier=tier,
        limit_value=str(value),
    )


def limit_day(moment: datetime, utc_offset_minutes: int) -> str:
    """The calendar day (YYYY-MM-DD) daily limits count in: China has one fixed offset (UTC+8, no DST)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(timezone(timedelta(minutes=utc_offset_minutes))).date().isoformat()


# Defaults in CNY fen, by risk tier (identity's low / medium / high). A wallet tops up and pays out at most
# what it may pay at once (50,000 / 20,000 / 5,000 yuan), except that a high-risk wallet pays out at most
# 2,000 yuan at a time: money leaving the platform is where fraud cashes out.
DEFAULT_LIMITS: dict[str, dict[str, Limits]] = {
    "low": {
        "CNY": Limits(single=5_000_000, daily_amount=20_000_000, daily_count=200, top_up=5_000_000, payout=5_000_000)
    },
    "medium": {
        "CNY": Limits(single=2_000_000, daily_amount=5_000_000, daily_count=100, top_up=2_000_000, payout=2_000_000)
    },
    "high": {"CNY": Limits(single=500_000, daily_amount=1_000_000, daily_count=20, top_up=500_000, payout=200_000)},
}

# Every bank by default: one million major units per top-up or payout in each supported currency
# (CNY 1,000,000.00, JPY 1,000,000), a bank transfer's order of size. Far below the ledger's range
# (2^62 minor units), so no one operation can bring a clearing account near it.
DEFAULT_BANK_CAPS: dict[str, dict[str, BankCaps]] = {
    ANY_BANK: {
        currency: BankCaps(top_up=10 ** (6 + exponent), payout=10 ** (6 + exponent))
        for currency, exponent in CURRENCIES.items()
    },
}

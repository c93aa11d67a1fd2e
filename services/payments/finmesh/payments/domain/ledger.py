"""Double-entry transfers: every movement is a set of postings that sums to zero."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from finmesh.platform.money import Money, checked


class AccountKind(StrEnum):
    CUSTOMER_WALLET = "CUSTOMER_WALLET"
    MERCHANT = "MERCHANT"
    PLATFORM_FEE = "PLATFORM_FEE"
    RISK_RESERVE = "RISK_RESERVE"
    CLEARING = "CLEARING"


# Accounts whose balance may go below zero: a clearing account mirrors money
# owed to or by an outside channel, so its balance is the negative of what
# came in through it.
MAY_GO_NEGATIVE = frozenset({AccountKind.CLEARING})


class TransferKind(StrEnum):
    TOP_UP = "TOP_UP"
    PAYOUT = "PAYOUT"
    PAYMENT = "PAYMENT"
    CAPTURE = "CAPTURE"
    REFUND = "REFUND"
    TRANSFER = "TRANSFER"


@dataclass(frozen=True)
class Posting:
    """One side of a transfer: positive credits the account, negative debits it."""

    account_id: str
    amount: int


@dataclass(frozen=True)
class Transfer:
    kind: TransferKind
    currency: str
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        if sum(p.amount for p in self.postings) != 0:
            raise ValueError("unbalanced transfer")
        if any(p.amount == 0 for p in self.postings):
            raise ValueError("zero posting")
        for p in self.postings:
            checked(p.amount)

    @property
    def amount(self) -> int:
        return sum(p.amount for p in self.postings if p.amount > 0)


def move(kind: TransferKind, source: str, destination: str, amount: Money) -> Transfer:
    """The simple transfer: debit `source`, credit `destination`."""
    return Transfer(
        kind=kind,
        currency=amount.currency,
        postings=(Posting(source, -amount.minor_units), Posting(destination, amount.minor_units)),
    )


def clearing_account_id(channel: str, currency: str) -> str:
    """Deterministic id of a channel's clearing account, opened on first use."""
    return f"clearing:{channel}:{currency}"

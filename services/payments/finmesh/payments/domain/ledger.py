"""Double-entry ledger rules: balanced transfers over accounts with available, held and unsettled buckets.

Pure: functions take account states and return new ones (or raise a refusal);
the store persists whatever they return. Every balance lives in one of three
buckets, all counted in the account's total:
- available: spendable now;
- held: reserved for a pending debit (an authorized payment, a payout in flight);
- unsettled: a merchant's captured takings waiting for settlement ("collect
  before pay": nothing leaves until it has been settled).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.money import MAX_MINOR_UNITS


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
# Accounts customers pay from and to; platform and clearing accounts move only
# through settlement and channel operations.
CUSTOMER_KINDS = frozenset({AccountKind.CUSTOMER_WALLET, AccountKind.MERCHANT})


class AccountStatus(StrEnum):
    ACTIVE = "ACTIVE"
    FROZEN = "FROZEN"


class Bucket(StrEnum):
    AVAILABLE = "AVAILABLE"
    HELD = "HELD"
    UNSETTLED = "UNSETTLED"


class TransferKind(StrEnum):
    TOP_UP = "TOP_UP"
    PAYOUT = "PAYOUT"
    PAYMENT = "PAYMENT"
    CAPTURE = "CAPTURE"
    REFUND = "REFUND"
    TRANSFER = "TRANSFER"
    SETTLEMENT = "SETTLEMENT"


@dataclass(frozen=True)
class AccountState:
    account_id: str
    owner_id: str
    kind: AccountKind
    currency: str
    status: AccountStatus
    channel: str
    available: int
    held: int
    unsettled: int
    created_at: datetime

    @property
    def total(self) -> int:
        return self.available + self.held + self.unsettled

    def bucket(self, bucket: Bucket) -> int:
        return {Bucket.AVAILABLE: self.available, Bucket.HELD: self.held, Bucket.UNSETTLED: self.unsettled}[bucket]

    def with_bucket(self, bucket: Bucket, value: int) -> AccountState:
        if bucket is Bucket.AVAILABLE:
            return replace(self, available=value)
        if bucket is Bucket.HELD:
            return replace(self, held=value)
        return replace(self, unsettled=value)


@dataclass(frozen=True)
class Posting:
    """One side of a transfer: positive credits the account's bucket, negative debits it."""

    account_id: str
    amount: int
    bucket: Bucket = Bucket.AVAILABLE


@dataclass(frozen=True)
class Transfer:
    kind: TransferKind
    currency: str
    postings: tuple[Posting, ...]
    reference: str = ""

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise ValueError("a transfer needs at least two postings")
        if sum(p.amount for p in self.postings) != 0:
            raise ValueError("unbalanced transfer")
        if any(not 0 < abs(p.amount) <= MAX_MINOR_UNITS for p in self.postings):
            raise ValueError("posting amount out of range: zero, or beyond the supported range")

    @property
    def amount(self) -> int:
        """What moved: the sum of the credits."""
        return sum(p.amount for p in self.postings if p.amount > 0)


def move(
    kind: TransferKind,
    source: str,
    destination: str,
    currency: str,
    amount: int,
    *,
    reference: str = "",
    source_bucket: Bucket = Bucket.AVAILABLE,
    destination_bucket: Bucket = Bucket.AVAILABLE,
) -> Transfer:
    """The simple transfer: debit `source`, credit `destination`."""
    return Transfer(
        kind,
        currency,
        (Posting(source, -amount, source_bucket), Posting(destination, amount, destination_bucket)),
        reference,
    )


def post(
    accounts: dict[str, AccountState], transfer: Transfer, *, allow_frozen: bool = False
) -> dict[str, AccountState]:
    """The accounts after `transfer`, or a refusal naming the first rule it breaks; inputs stay untouched.

    A debit from the held bucket spends funds reserved earlier, so it is
    allowed on a frozen account (the reservation predates the freeze).
    `allow_frozen` lets platform-internal moves (settlement) through as well.
    """
    after = dict(accounts)
    for posting in transfer.postings:
        account = after.get(posting.account_id)
        if account is None:
            raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=posting.account_id)
        if account.currency != transfer.currency:
            raise FailedPrecondition(
                "CURRENCY_MISMATCH",
                f"account is in {account.currency}, not {transfer.currency}",
                account_id=account.account_id,
            )
        if posting.amount < 0:
            _check_debit(account, posting, allow_frozen=allow_frozen)
        balance = account.bucket(posting.bucket) + posting.amount
        total = account.total + posting.amount
        if not -MAX_MINOR_UNITS <= balance <= MAX_MINOR_UNITS or not -MAX_MINOR_UNITS <= total <= MAX_MINOR_UNITS:
            raise FailedPrecondition(
                "AMOUNT_OVERFLOW", "the balance would leave the supported range", account_id=account.account_id
            )
        after[posting.account_id] = account.with_bucket(posting.bucket, balance)
    return {account_id: after[account_id] for account_id in {p.account_id for p in transfer.postings}}


def _check_debit(account: AccountState, posting: Posting, *, allow_frozen: bool) -> None:
    amount = -posting.amount
    if posting.bucket is not Bucket.HELD and account.status is AccountStatus.FROZEN and not allow_frozen:
        raise FailedPrecondition("ACCOUNT_FROZEN", "account is frozen", account_id=account.account_id)
    if posting.bucket is Bucket.AVAILABLE and account.kind in MAY_GO_NEGATIVE:
        return
    if account.bucket(posting.bucket) < amount:
        if posting.bucket is Bucket.HELD:
            # Holds are created and spent by the same payment: a short hold is a bug, not a refusal.
            raise RuntimeError(f"hold on {account.account_id} is smaller than its capture")
        raise FailedPrecondition("INSUFFICIENT_FUNDS", "insufficient available balance", account_id=account.account_id)


def hold(account: AccountState, amount: int) -> AccountState:
    """Reserve funds (available -> held) on an active account that has them."""
    if account.status is AccountStatus.FROZEN:
        raise FailedPrecondition("ACCOUNT_FROZEN", "account is frozen", account_id=account.account_id)
    if account.available < amount:
        raise FailedPrecondition("INSUFFICIENT_FUNDS", "insufficient available balance", account_id=account.account_id)
    return replace(account, available=account.available - amount, held=account.held + amount)


def hold_settled(account: AccountState, amount: int) -> AccountState:
    """Reserve settled funds for money leaving the platform; unsettled takings are named as such."""
    unsettled_would_cover = account.available < amount <= account.available + account.unsettled
    if account.status is not AccountStatus.FROZEN and unsettled_would_cover:
        raise FailedPrecondition(
            "UNSETTLED_FUNDS",
            "part of the balance is not settled yet; run settlement first",
            account_id=account.account_id,
            available_minor_units=str(account.available),
        )
    return hold(account, amount)


def release(account: AccountState, amount: int) -> AccountState:
    """Give reserved funds back (held -> available); a short hold is a bug."""
    if account.held < amount:
        raise RuntimeError(f"hold on {account.account_id} is smaller than the release")
    return replace(account, available=account.available + amount, held=account.held - amount)


def takings_bucket(kind: AccountKind) -> Bucket:
    """Where a payment's money lands: a merchant's takings wait for settlement, a wallet can spend at once."""
    return Bucket.UNSETTLED if kind is AccountKind.MERCHANT else Bucket.AVAILABLE


def clearing_account_id(channel: str, currency: str) -> str:
    """Deterministic id of a channel's clearing account, opened on first use."""
    return f"clearing:{channel}:{currency}"


def platform_account_id(kind: AccountKind, currency: str) -> str:
    """Deterministic id of the platform's fee or risk-reserve account in one currency."""
    return f"{kind.value.lower().replace('_', '-')}:{currency}"

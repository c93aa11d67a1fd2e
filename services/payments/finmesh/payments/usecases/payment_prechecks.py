"""CreatePayment's pre-check: refuse what cannot succeed before spending risk's capacity (and the payer's
velocity budget) on it.

The same rules run again, authoritatively, inside the ledger writer; this check only decides whether risk
is asked at all. It runs on the states this process's ledger writer last committed (store.recent) when it has
them all and they pass; else on one read of the database (store.precheck) that also brings the answer stored
under the caller's key. A possibly stale state never refuses a payment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finmesh.payments.domain.ledger import AccountState, AccountStatus
from finmesh.payments.domain.payments import PaymentRequest
from finmesh.payments.domain.synthetic import require_test_accounts
from finmesh.payments.store.reads import Reads
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import payments as usecase
from finmesh.payments.usecases.ledger_writer import LedgerWriter
from finmesh.payments.usecases.ownership import require_own_account
from finmesh.payments.usecases.payments import LimitRules
from finmesh.platform.errors import DomainError, FailedPrecondition


@dataclass(frozen=True)
class Checked:
    payer: AccountState
    payee: AccountState
    tier: str  # the payer's (from the caller's token, see store.tiers); "" for an account without owner


@dataclass(frozen=True)
class Precheck:
    """One of: the parties passed (`checked`), the key already has an answer (`prior`, the stored row, to
    replay), or the payment cannot succeed (`refusal`, to record under the key)."""

    checked: Checked | None = None
    prior: Mapping[str, Any] | None = None
    refusal: DomainError | None = None


class PaymentPrechecks:
    def __init__(self, reads: Reads, writer: LedgerWriter, limits: LimitRules) -> None:
        self._reads = reads
        self._writer = writer
        self._limits = limits

    async def check(
        self, payment: PaymentRequest, method: str, scope: str, key: str, day: str, now: datetime, marked: bool
    ) -> Precheck:
        """`scope`, `key`: the caller's idempotency key; `day`: the payer's limit day; `marked`: the call is marked
        synthetic. PERMISSION_DENIED, raised, when a customer pays from an account they do not own (before
        the replay: another customer's key must not read this one's stored answer)."""
        parties = (payment.payer_account_id, payment.payee_account_id)
        checked = await self._on_recent(payment, parties, day, now, marked)
        if checked is not None:
            return Precheck(checked=checked)
        snapshot = await self._reads.payment_snapshot(method, scope, key, parties, day)
        self._writer.recent.fill(
            snapshot.accounts.values(), [(k, v) for k, v in snapshot.usage.items() if v is not None]
        )
        require_own_account(snapshot.accounts.get(payment.payer_account_id))
        if snapshot.prior is not None:
            return Precheck(prior=snapshot.prior)
        try:
            return Precheck(checked=await self._on(snapshot.accounts, snapshot.usage, payment, parties, now, marked))
        except DomainError as error:
            return Precheck(refusal=error)

    async def _on_recent(
        self, payment: PaymentRequest, parties: tuple[str, str], day: str, now: datetime, marked: bool
    ) -> Checked | None:
        """The check on the states the ledger writer last committed, when it has them all and they pass; None
        means: read the database and check again. Replays need no check here: the writer answers a used key
        from its stored answer."""
        states = self._writer.recent.payment_states(parties, day)
        if states is None:
            return None
        accounts, usage = states
        try:
            require_own_account(accounts[payment.payer_account_id])  # owners never change: a cached one holds
            return await self._on(accounts, usage, payment, parties, now, marked)
        except DomainError:
            return None

    async def _on(
        self,
        accounts: dict[str, AccountState],
        usage: dict[Any, Any],
        payment: PaymentRequest,
        parties: tuple[str, str],
        now: datetime,
        marked: bool,
    ) -> Checked:
        # The states usually answer every check; a connection opens only if one needs more (a tier).
        async with self._reads.on_demand() as conn:
            uow = UnitOfWork(conn, now, self._writer.tier_source)
            uow.preload(parties, accounts, usage)
            return await self._check(uow, payment, marked)

    async def _check(self, uow: UnitOfWork, payment: PaymentRequest, marked: bool) -> Checked:
        """The rules, on a unit of work that is never flushed (`uow`, preloaded). A call marked synthetic must
        name test accounts only (owners never change, so this check holds)."""
        payer, payee = await usecase.parties(
            uow, payment.payer_account_id, payment.payee_account_id, payment.amount.currency
        )
        if marked:
            require_test_accounts(
                {payer.account_id: payer.owner_id, payee.account_id: payee.owner_id}, self._writer.test_owners
            )
        if payer.status is AccountStatus.FROZEN:
            raise FailedPrecondition("ACCOUNT_FROZEN", "account is frozen", account_id=payer.account_id)
        await usecase.check_limits(uow, self._limits, payer, payment.amount.minor_units)
        if payer.available < payment.amount.minor_units:
            raise FailedPrecondition(
                "INSUFFICIENT_FUNDS", "insufficient available balance", account_id=payer.account_id
            )
        return Checked(payer, payee, await uow.tier(payer.owner_id) if payer.owner_id else "")

"""Who may act on what: customers on their own accounts and payments (and the kinds of account they may open),
calls marked synthetic on test accounts only.

The platform's authorizer has already checked the permission each RPC
declares and that a customer names only themselves where a request carries a
user id. Accounts and payments are named by their own ids, so payments looks
their owner up here (only for customer callers: operators, services and
FINMESH_AUTH_MODE=off pass without a read). A missing account is left to the
handler, which answers NOT_FOUND as before.
"""

from __future__ import annotations

from typing import Any

from finmesh.payments.domain import synthetic as synthetic_rules
from finmesh.payments.domain.ledger import AccountKind
from finmesh.payments.store.reads import Reads
from finmesh.platform.auth.context import current_principal, require_owner
from finmesh.platform.auth.roles import ENTERPRISE, INSTITUTION
from finmesh.platform.errors import PermissionDenied

# Merchants are businesses: a personal customer holds wallets only.
_MERCHANT_ROLES = frozenset({ENTERPRISE, INSTITUTION})


def customer_caller() -> bool:
    principal = current_principal()
    return principal is not None and principal.is_customer


async def require_account_owner(reads: Reads, account_id: str) -> None:
    """PERMISSION_DENIED when a customer names an account someone else owns."""
    if not customer_caller():
        return
    require_own_account(await reads.account(account_id))


def require_own_account(account: Any) -> None:
    """As require_account_owner, for an account (row or state) already read; None is left to the handler."""
    if account is not None and customer_caller():
        require_owner(account.owner_id, "accounts")


async def require_payment_party(reads: Reads, payer_account_id: str, payee_account_id: str) -> None:
    """A customer may read a payment they pay or receive, no other."""
    principal = current_principal()
    if principal is None or not principal.is_customer:
        return
    found = await reads.accounts([payer_account_id, payee_account_id])
    if not any(row.owner_id == principal.subject for row in found.values()):
        raise PermissionDenied("PERMISSION_MISSING", "customers may only act on their own payments")


async def require_payee_owner(reads: Reads, payment_id: str) -> None:
    """A merchant captures, voids and refunds only payments made to an account it owns (the permission says
    a merchant may capture; this says whose payments). A missing payment is left to the handler (NOT_FOUND).
    The payee of a payment and the owner of an account never change, so a read before the writer holds."""
    if not customer_caller():
        return
    payment, payee = await reads.payment_and_payee(payment_id)
    if payment is None:
        return
    if payee is None:
        raise PermissionDenied("PERMISSION_MISSING", "customers may only act on payments to their own accounts")
    require_owner(payee.owner_id, "payments")


async def require_own_sources(reads: Reads, account_ids: list[str]) -> None:
    """A customer's batch (an institution's payroll) moves money out of its own accounts only; services and
    operators with the permission pass. Missing accounts are left to each transfer's own refusal."""
    if not customer_caller() or not account_ids:
        return
    found = await reads.accounts(sorted(set(account_ids)))
    for account in found.values():
        require_own_account(account)


def require_openable(kind: AccountKind) -> None:
    """Customers open wallets; enterprises and institutions also merchant accounts; platform accounts are
    operators' (admin)."""
    principal = current_principal()
    if principal is None or not principal.is_customer or kind is AccountKind.CUSTOMER_WALLET:
        return
    if kind is AccountKind.MERCHANT and principal.roles & _MERCHANT_ROLES:
        return
    raise PermissionDenied("PERMISSION_MISSING", f"customers of this kind may not open {kind.value} accounts")


async def require_test_accounts(reads: Reads, account_ids: list[str], test_owners: frozenset[str]) -> None:
    """For a call marked synthetic (finmesh.platform.observability.synthetic): PERMISSION_DENIED
    SYNTHETIC_REAL_ACCOUNT unless every account belongs to a test owner, before anything is written."""
    found = await reads.accounts(account_ids)
    owners = {account_id: found[account_id].owner_id if account_id in found else "" for account_id in account_ids}
    synthetic_rules.require_test_accounts(owners, test_owners)


async def require_test_payment(reads: Reads, payment_id: str, test_owners: frozenset[str]) -> None:
    """As require_test_accounts, for both parties of a payment (an unknown payment is left to the handler)."""
    row = await reads.payment(payment_id)
    if row is not None:
        await require_test_accounts(reads, [row.payer_account_id, row.payee_account_id], test_owners)

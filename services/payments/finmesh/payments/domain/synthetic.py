"""Synthetic traffic (load tests, rollout probes) moves money only between dedicated test accounts.

Which accounts are test accounts is configuration (FINMESH_SYNTHETIC_OWNER_IDS: their owners), never
the caller's say: a payment between test accounts is synthetic whether or not the call was marked, and
a marked call that touches any other account is refused, so a harness run against a live deployment
cannot move a customer's money.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from finmesh.platform.errors import PermissionDenied

REAL_ACCOUNT = "SYNTHETIC_REAL_ACCOUNT"


def between_test_accounts(owner_ids: Iterable[str], test_owners: Collection[str]) -> bool:
    owners = list(owner_ids)
    return bool(owners) and all(owner and owner in test_owners for owner in owners)


def require_test_accounts(owners: dict[str, str], test_owners: Collection[str]) -> None:
    """Refuse a marked call on any account (account id -> owner id) not owned by a test owner."""
    for account_id, owner_id in owners.items():
        if not (owner_id and owner_id in test_owners):
            raise PermissionDenied(
                REAL_ACCOUNT, "synthetic traffic may move money only between test accounts", account_id=account_id
            )

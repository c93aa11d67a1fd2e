"""The verified caller of the current RPC, for servicers that check ownership or record who acted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from finmesh.platform.auth.roles import SERVICE, is_customer_only, permissions_of
from finmesh.platform.errors import PermissionDenied


@dataclass(frozen=True)
class Principal:
    """What a verified access token says about its holder."""

    subject: str  # a user id, or "service:<name>" for service tokens
    roles: frozenset[str]
    # "low" | "medium" | "high", or "" while risk has not tiered the user.
    risk_tier: str = ""
    # All three onboarding checks passed (seed 3.1): the user may transact.
    verified: bool = False
    token_id: str = ""
    expires_at: int = 0

    @property
    def is_service(self) -> bool:
        return SERVICE in self.roles

    @property
    def is_customer(self) -> bool:
        """Acts only for itself: every role is a customer role."""
        return is_customer_only(self.roles)

    @property
    def permissions(self) -> frozenset[str]:
        return permissions_of(self.roles)


_current: ContextVar[Principal | None] = ContextVar("finmesh_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being served; None when FINMESH_AUTH_MODE is "off" or the RPC is public."""
    return _current.get()


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def require_owner(owner_id: str, what: str = "resource") -> None:
    """Refuse a customer acting on someone else's `what`; operators, services and auth-off pass.

    For resources named by their own id (an account, a payment): the owning
    service loads the owner and calls this before acting.
    """
    principal = current_principal()
    if principal is not None and principal.is_customer and owner_id != principal.subject:
        raise PermissionDenied("PERMISSION_MISSING", f"customers may only act on their own {what}")


def accessor_id() -> str:
    """Who is acting, for audit records."""
    principal = current_principal()
    return principal.subject if principal is not None else "unauthenticated"

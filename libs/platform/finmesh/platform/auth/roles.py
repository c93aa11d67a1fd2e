"""Who may do what: the one role -> permission table of the mesh, plus the ownership and verification rules.

Permissions are the strings each RPC declares in its `finmesh.common.v1.access`
option. Tokens carry role names, not permissions, so a change here applies to
tokens already issued. Least privilege: a role gets a permission only when a
real task of that role needs it; anything not listed is PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

PERSONAL = "personal"
ENTERPRISE = "enterprise"
INSTITUTION = "institution"
SUPPORT = "support"
RISK_OFFICER = "risk_officer"
ADMIN = "admin"
SERVICE = "service"

# Customers act for themselves only (see OWNED_FIELDS); operators and services act for others.
CUSTOMER_ROLES = frozenset({PERSONAL, ENTERPRISE, INSTITUTION})
OPERATOR_ROLES = frozenset({SUPPORT, RISK_OFFICER, ADMIN})
ALL_ROLES = (PERSONAL, ENTERPRISE, INSTITUTION, SUPPORT, RISK_OFFICER, ADMIN, SERVICE)

# What every customer may do with their own user, money and messages.
_CUSTOMER = frozenset(
    {
        "identity.user.read",
        "identity.session.revoke",
        "identity.mfa.manage",
        "identity.pii.reveal",
        "payments.account.open",
        "payments.account.read",
        "payments.topup.create",
        "payments.payout.create",
        "payments.payment.create",
        "payments.payment.read",
        # Their own accounts' statements: payments checks ownership (api/ownership.py).
        "payments.ledger.read",
        "notify.notification.read",
        "notify.consent.read",
        "notify.consent.write",
        "notify.complaint.open",
        # Not notify.complaint.read: ListComplaints is not scoped to a user, so it stays with support.
    }
)
# Merchants (enterprises, institutions) also capture and refund, see their settlements, receive webhooks.
_MERCHANT = _CUSTOMER | {
    "payments.payment.capture",
    "payments.payment.refund",
    "payments.settlement.read",
    "notify.webhook.write",
}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    PERSONAL: _CUSTOMER,
    ENTERPRISE: _MERCHANT,
    # Institutions are the bulk callers (payroll, load harnesses): batches of transfers.
    INSTITUTION: _MERCHANT | {"payments.transfer.batch"},
    # Front-line help: look a customer up, read their payments and messages, handle complaints.
    # Clear personal data only through RevealPersonalData, which is audited.
    SUPPORT: frozenset(
        {
            "identity.user.read",
            "identity.session.revoke",
            "identity.pii.reveal",
            "payments.account.read",
            "payments.payment.read",
            "payments.payment.refund",
            # "Where is my money?": the account's statement, as its owner sees it.
            "payments.ledger.read",
            "notify.notification.read",
            "notify.consent.read",
            "notify.consent.write",
            "notify.complaint.open",
            "notify.complaint.read",
            "notify.complaint.handle",
            "notify.deadletter.read",
            "risk.blocklist.read",
        }
    ),
    # Risk control (seed 6.x): rules, block lists, reviews, freezes, tiers, AML and alerts.
    RISK_OFFICER: frozenset(
        {
            "identity.user.read",
            "identity.tier.write",
            "identity.pii.reveal",
            "payments.account.read",
            "payments.account.freeze",
            "payments.payment.read",
            "payments.payment.review",
            "payments.ledger.read",
            "payments.audit.verify",
            "risk.rules.read",
            "risk.rules.write",
            "risk.blocklist.read",
            "risk.blocklist.write",
            "risk.aml.read",
            "risk.alert.read",
            "risk.indicators.read",
        }
    ),
    # Platform operations: keys, roles, erasure, the PII audit trail, settlement and reconciliation.
    # Deliberately no clear personal data and no money movement of its own.
    ADMIN: frozenset(
        {
            "identity.user.read",
            "identity.keys.rotate",
            "identity.role.assign",
            "identity.user.erase",
            "identity.pii.audit",
            "identity.session.revoke",
            "payments.account.open",
            "payments.account.read",
            "payments.ledger.read",
            "payments.settlement.run",
            "payments.settlement.read",
            "payments.reconciliation.run",
            "payments.audit.verify",
            "risk.rules.read",
            "risk.indicators.read",
            "notify.deadletter.read",
            "notify.deadletter.redrive",
            "notify.webhook.write",
        }
    ),
    # Service tokens: exactly the calls services make to each other.
    SERVICE: frozenset(
        {
            "risk.payment.assess",
            "risk.onboarding.assess",  # payments -> risk, identity -> risk
            "notify.event.deliver",
            "notify.notification.send",  # outbox relays, codes and alerts
            "events.event.deliver",  # outbox relays to every other consumer (EventIntakeService)
            "payments.account.freeze",  # risk's emergency response
            "identity.tier.write",
            "identity.user.read",  # risk re-tiers users on events
        }
    ),
}

# RPCs where a customer may only name themselves: full method -> request field (dotted path) holding
# a user id.
# Operators and services are not bound by it. Resources named by other ids (an account, a payment)
# are checked by the owning service with finmesh.platform.auth.context.require_owner.
OWNED_FIELDS: dict[str, str] = {
    "/finmesh.identity.v1.IdentityService/GetUser": "user_id",
    "/finmesh.identity.v1.IdentityService/EnrollTotp": "user_id",
    "/finmesh.identity.v1.IdentityService/ConfirmTotp": "user_id",
    "/finmesh.identity.v1.IdentityService/RevealPersonalData": "user_id",
    "/finmesh.payments.v1.PaymentsService/OpenAccount": "owner_id",
    "/finmesh.payments.v1.PaymentsService/ListAccounts": "owner_id",
    "/finmesh.notify.v1.NotifyService/ListNotifications": "user_id",
    "/finmesh.notify.v1.NotifyService/GetConsent": "user_id",
    "/finmesh.notify.v1.NotifyService/SetConsent": "consent.user_id",
    "/finmesh.notify.v1.NotifyService/OpenComplaint": "user_id",
}

# Moving money needs all three onboarding checks (seed 3.1); the token says whether they passed.
VERIFIED_ONLY = frozenset(
    {
        "payments.topup.create",
        "payments.payout.create",
        "payments.payment.create",
        "payments.transfer.batch",
    }
)


@lru_cache(maxsize=256)
def permissions_of(roles: frozenset[str]) -> frozenset[str]:
    """Union of the roles' permissions (cached: a handful of role sets recur on every call)."""
    granted: set[str] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())
    return frozenset(granted)


def is_customer_only(roles: Iterable[str]) -> bool:
    """True when every role is a customer role: such callers act only for themselves."""
    roles = frozenset(roles)
    return bool(roles) and roles <= CUSTOMER_ROLES

"""Auth for tests: one signing key, a small identity that publishes it, and tokens minted by role.

Every suite but identity's own runs its services with FINMESH_AUTH_MODE=enforce
against `Issuer`: a real gRPC server speaking identity's GetPublicKeys and
GetServiceToken (checking service credentials against the mesh secret), so
services verify tokens and fetch service tokens exactly as in production, only
without identity's database. Tests mint user and operator tokens with
`Issuer.mint` (the claims identity's CompleteLogin signs; `vrf` set, so a test
that needs a verified customer needs no onboarding).

`ActingAs` is a client interceptor for test channels: each call carries the
token of the caller that makes that call in production (`CALLERS`): the owner
of the account or user named in the request (learned from the replies that
created it), an operator role for back-office RPCs, a service token for
service-to-service RPCs. A call that already has `authorization` metadata
keeps it, so a test can act as anyone explicitly.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import timestamp_pb2

from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.platform.auth.service_tokens import check_credential
from finmesh.platform.auth.tokens import AUDIENCE, ISSUER, sign
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.server import Registration, RunningServer, create_server

SERVICE_SECRET = "test-service-secret"  # tests only; production secrets come from a Secret


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting `token`."""
    return (("authorization", f"Bearer {token}"),)


class _KeysServicer(id_grpc.IdentityServiceServicer):
    """The two RPCs other services need from identity: its public keys and service tokens."""

    def __init__(self, issuer: Issuer) -> None:
        self._issuer = issuer

    async def GetPublicKeys(self, request: Any, context: Any) -> Any:
        self._issuer.keys_served += 1
        raw = self._issuer.public_key_bytes
        return id_pb.GetPublicKeysResponse(
            keys=[id_pb.PublicKey(key_id=self._issuer.kid, algorithm="EdDSA", public_key=raw)],
            active_key_id=self._issuer.kid,
        )

    async def GetServiceToken(self, request: Any, context: Any) -> Any:
        if not check_credential(SERVICE_SECRET.encode(), request.service, request.credential):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown service or wrong credential")
        token = self._issuer.service(request.service)
        self._issuer.service_tokens_issued += 1
        return id_pb.GetServiceTokenResponse(
            access_token=token, expires_at=timestamp_pb2.Timestamp(seconds=int(time.time()) + 600)
        )

    async def SetRiskTier(self, request: Any, context: Any) -> Any:
        # Risk re-tiers users on events; the tests that care read this list.
        self._issuer.tier_updates.append((request.user_id, request.tier, request.reason))
        return id_pb.SetRiskTierResponse(user=id_pb.User(user_id=request.user_id, risk_tier=request.tier))


@dataclass
class Issuer:
    """A signing key, the identity endpoint that publishes it, and token minting."""

    private_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = field(default_factory=lambda: "test-" + uuid.uuid4().hex[:8])
    server: RunningServer | None = None
    service_tokens_issued: int = 0
    keys_served: int = 0
    tier_updates: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def public_key_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def target(self) -> str:
        assert self.server is not None, "issuer not started"
        return f"127.0.0.1:{self.server.port}"

    async def start(self) -> Issuer:
        settings = ServiceSettings(host="127.0.0.1", port=0, auth_mode="off", tracing_enabled=False)
        self.server = await create_server(
            settings,
            [
                Registration(
                    # Serves GetPublicKeys only; the generated base answers every other RPC UNIMPLEMENTED.
                    _KeysServicer(self),  # type: ignore[abstract]
                    id_grpc.add_IdentityServiceServicer_to_server,
                    id_pb.DESCRIPTOR.services_by_name["IdentityService"],
                )
            ],
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.server.stop(0)
            self.server = None

    def settings(self) -> dict[str, Any]:
        """Settings for a service under test: enforce auth, keys and service tokens from this issuer."""
        return {"auth_mode": "enforce", "identity_target": self.target, "service_secret": SERVICE_SECRET}

    def mint(
        self, *roles: str, sub: str = "", verified: bool = True, tier: str = "low", ttl: int = 600, iat_offset: int = 0
    ) -> str:
        """A user or operator token as identity's CompleteLogin signs it."""
        now = int(time.time()) + iat_offset
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub or uuid.uuid4().hex,
            "roles": sorted(roles),
            "tier": tier,
            "vrf": verified,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        return sign(claims, self.private_key, self.kid)

    def service(self, name: str, ttl: int = 600) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"service:{name}",
            "roles": ["service"],
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        return sign(claims, self.private_key, self.kid)

    def customer(self, sub: str, *, role: str = "personal", verified: bool = True, tier: str = "low") -> str:
        return self.mint(role, sub=sub, verified=verified, tier=tier)

    def operator(self, role: str) -> str:
        """The token of the one operator of `role` on duty: the same subject on every call, as a person's own
        tokens have (idempotency keys are per caller, so a retry must come from the same subject)."""
        return self.mint(role, sub=f"{role}-on-duty")

    def md(self, *roles: str, **kwargs: Any) -> tuple[tuple[str, str], ...]:
        return bearer(self.mint(*roles, **kwargs))


# --- who makes each call in production --------------------------------------------------------------

_PAY = "/finmesh.payments.v1.PaymentsService/"
_RISK = "/finmesh.risk.v1.RiskService/"
_NOTIFY = "/finmesh.notify.v1.NotifyService/"

# Platform accounts have no owner: an admin opens them.
_PLATFORM_KINDS = {3, 4, 5}  # ACCOUNT_KIND_PLATFORM_FEE, _RISK_RESERVE, _CLEARING
_MERCHANT_KIND = 2


@dataclass
class Book:
    """What the client learned from replies: account owners and kinds, payment parties."""

    owners: dict[str, tuple[str, int]] = field(default_factory=dict)  # account id -> (owner id, kind)
    payments: dict[str, tuple[str, str]] = field(default_factory=dict)  # payment id -> (payer acct, payee acct)
    # Owner id -> the `tier` claim of their tokens. Unset: "" (risk has not tiered the user yet), so
    # payments falls back to its own table, which some tests set.
    tiers: dict[str, str] = field(default_factory=dict)

    def learn(self, reply: Any) -> None:
        for name in ("account", "payment", "payments", "accounts", "results"):
            value = (
                getattr(reply, name, None)
                if hasattr(reply, "DESCRIPTOR") and name in reply.DESCRIPTOR.fields_by_name
                else None
            )
            if value is None:
                continue
            for item in value if hasattr(value, "__iter__") and not hasattr(value, "DESCRIPTOR") else [value]:
                if hasattr(item, "owner_id") and item.account_id:
                    self.owners[item.account_id] = (item.owner_id, item.kind)
                if hasattr(item, "payer_account_id") and getattr(item, "payment_id", None):
                    self.payments[item.payment_id] = (item.payer_account_id, item.payee_account_id)


def _customer_role(kind: int) -> str:
    return "enterprise" if kind == _MERCHANT_KIND else "personal"


def _account_holder(issuer: Issuer, book: Book, account_id: str, fallback: str = "personal") -> str:
    """The account's owner; for an account nobody learned (bad input, a platform account), `fallback`:
    a customer role is a fresh verified customer of that role, anything else an operator."""
    owner, kind = book.owners.get(account_id, ("", 0))
    if owner:
        return issuer.customer(owner, role=_customer_role(kind), tier=book.tiers.get(owner, ""))
    if fallback in ("personal", "enterprise", "institution"):
        return issuer.customer(uuid.uuid4().hex, role=fallback)
    return issuer.operator(fallback)


def _payee_merchant(issuer: Issuer, book: Book, payment_id: str) -> str:
    """Capture, void and refund are the merchant's: the payee's owner, acting as an enterprise."""
    payee = book.payments.get(payment_id, ("", ""))[1]
    owner = book.owners.get(payee, ("", 0))[0]
    return issuer.customer(owner or uuid.uuid4().hex, role="enterprise")


def _batch_caller(issuer: Issuer, book: Book, request: Any) -> str:
    """An institution paying out of its own accounts: the owner of the batch's first source (a batch whose
    sources other owners hold is refused, as in production)."""
    first = request.transfers[0].from_account_id if request.transfers else ""
    owner = book.owners.get(first, ("", 0))[0]
    return issuer.customer(owner or uuid.uuid4().hex, role="institution")


def _open_account(issuer: Issuer, book: Book, request: Any) -> str:
    if request.kind in _PLATFORM_KINDS or not request.owner_id:
        return issuer.operator("admin")
    owner = request.owner_id
    return issuer.customer(owner, role=_customer_role(request.kind), tier=book.tiers.get(owner, ""))


Caller = Callable[[Issuer, Book, Any], str]

CALLERS: dict[str, Caller] = {
    # payments: customers act on their own accounts; operators run the back office.
    _PAY + "OpenAccount": _open_account,
    _PAY + "GetAccount": lambda i, b, r: _account_holder(i, b, r.account_id, "support"),
    _PAY + "ListAccounts": lambda i, b, r: i.customer(r.owner_id) if r.owner_id else i.operator("support"),
    _PAY + "TopUp": lambda i, b, r: _account_holder(i, b, r.account_id),
    _PAY + "Payout": lambda i, b, r: _account_holder(i, b, r.account_id),
    _PAY + "CreatePayment": lambda i, b, r: _account_holder(i, b, r.payer_account_id),
    _PAY + "GetPayment": lambda i, b, r: _account_holder(i, b, b.payments.get(r.payment_id, ("", ""))[0], "support"),
    _PAY + "ListPayments": lambda i, b, r: _account_holder(i, b, r.account_id, "support"),
    _PAY + "CapturePayment": lambda i, b, r: _payee_merchant(i, b, r.payment_id),
    _PAY + "VoidPayment": lambda i, b, r: _payee_merchant(i, b, r.payment_id),
    _PAY + "RefundPayment": lambda i, b, r: _payee_merchant(i, b, r.payment_id),
    _PAY + "ListSettlementBatches": lambda i, b, r: _account_holder(i, b, r.merchant_account_id, "admin"),
    _PAY + "BatchCreateTransfers": lambda i, b, r: _batch_caller(i, b, r),
    _PAY + "ReviewPayment": lambda i, b, r: i.operator("risk_officer"),
    _PAY + "FreezeAccount": lambda i, b, r: i.operator("risk_officer"),
    _PAY + "UnfreezeAccount": lambda i, b, r: i.operator("risk_officer"),
    _PAY + "ListLedgerEntries": lambda i, b, r: i.operator("risk_officer"),
    _PAY + "RunSettlement": lambda i, b, r: i.operator("admin"),
    _PAY + "ReconcileStatement": lambda i, b, r: i.operator("admin"),
    _PAY + "VerifyAuditLog": lambda i, b, r: i.operator("admin"),
    # risk: payments and identity call the assessments; risk officers own rules, lists and reports.
    _RISK + "AssessPayment": lambda i, b, r: i.service("payments"),
    _RISK + "AssessPayments": lambda i, b, r: i.service("payments"),
    _RISK + "AssessOnboarding": lambda i, b, r: i.service("identity"),
    # notify: services deliver events and send messages; customers their own consent, receipts, complaints.
    _NOTIFY + "DeliverEvent": lambda i, b, r: i.service("payments"),
    _NOTIFY + "DeliverEvents": lambda i, b, r: i.service("payments"),
    _NOTIFY + "SendNotification": lambda i, b, r: i.service("identity"),
    _NOTIFY + "GetNotification": lambda i, b, r: i.operator("support"),
    _NOTIFY + "ListNotifications": lambda i, b, r: i.customer(r.user_id) if r.user_id else i.operator("support"),
    _NOTIFY + "SetConsent": lambda i, b, r: i.customer(r.consent.user_id),
    _NOTIFY + "GetConsent": lambda i, b, r: i.customer(r.user_id),
    _NOTIFY + "OpenComplaint": lambda i, b, r: i.customer(r.user_id) if r.user_id else i.operator("support"),
    _NOTIFY + "CreateWebhook": lambda i, b, r: i.operator("admin"),
    _NOTIFY + "ListDeadLetters": lambda i, b, r: i.operator("admin"),
    _NOTIFY + "RedriveDeadLetter": lambda i, b, r: i.operator("admin"),
}
_DEFAULT_ROLE = {_RISK: "risk_officer", _NOTIFY: "support", _PAY: "admin"}


class ActingAs(grpc.aio.UnaryUnaryClientInterceptor):
    """Attaches the token of the production caller of each RPC (see CALLERS) unless one is given."""

    def __init__(self, issuer: Issuer, book: Book | None = None) -> None:
        self.issuer = issuer
        self.book = book or Book()

    def token_for(self, method: str, request: Any) -> str:
        caller = CALLERS.get(method)
        if caller is not None:
            return caller(self.issuer, self.book, request)
        for prefix, role in _DEFAULT_ROLE.items():
            if method.startswith(prefix):
                return self.issuer.operator(role)
        return ""

    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        metadata = list(details.metadata or ())
        if not any(k == "authorization" for k, _ in metadata):
            token = self.token_for(method, request)
            if token:
                # grpc.aio's ClientCallDetails is a namedtuple; its stub declares a plain class.
                details = details._replace(metadata=[*metadata, *bearer(token)])  # type: ignore[attr-defined]
        call = await continuation(details, request)
        with contextlib.suppress(grpc.aio.AioRpcError):  # the caller's own await raises it again
            self.book.learn(await call)
        return call


def channel(target: str, issuer: Issuer, book: Book | None = None) -> grpc.aio.Channel:
    """A test client channel whose calls carry their production caller's token."""
    return grpc.aio.insecure_channel(target, interceptors=[ActingAs(issuer, book)])

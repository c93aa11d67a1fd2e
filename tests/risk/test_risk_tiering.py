"""Risk raises the payer's tier at identity on an incident: SetRiskTier(HIGH, RISK_EVENT) with a key derived
from the incident, once per incident, retried with backoff while identity is down.

The real identity server runs here (its own database, auth enforced everywhere), with notify, payments and
risk beside it; risk reaches identity with its own service token, as in production.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import func, select

from finmesh.identity import app as identity_app
from finmesh.identity.domain.claims import Subject, service_claims, user_claims
from finmesh.identity.store.schema import outbox as identity_outbox
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.notify import app as notify_app
from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.store.schema import outbox as payments_outbox
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.server import RunningServer
from finmesh.platform.runner import start_app
from finmesh.platform.storage.db import create_engine
from finmesh.risk import app as risk_app
from finmesh.risk.clients.identity import IDENTITY_IDEMPOTENT_METHODS, IdentityClient
from finmesh.risk.config import RiskSettings
from finmesh.risk.store.schema import alerts
from finmesh.risk.usecases.emergency import tier_key
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc
from tests.identity.harness import SERVICE_SECRET, free_port, identity_settings, md, new_person
from tests.risk.harness import cny, key, payment, wait_until

TIER_CHANGED = "identity.user.tier_changed.v1"


@dataclass
class Tiering:
    settings: dict[str, Any]
    urls: dict[str, str]
    channels: dict[str, grpc.aio.Channel]
    identity: tuple[Any, RunningServer] | None = None

    @property
    def ids(self) -> id_grpc.IdentityServiceStub:
        return id_grpc.IdentityServiceStub(self.channels["identity"])

    @property
    def risk(self) -> pb_grpc.RiskServiceStub:
        return pb_grpc.RiskServiceStub(self.channels["risk"])

    @property
    def pay(self) -> pay_grpc.PaymentsServiceStub:
        return pay_grpc.PaymentsServiceStub(self.channels["payments"])

    async def start_identity(self) -> None:
        app = await identity_app.build(self.settings["identity"])
        self.identity = (app, await start_app(app, self.settings["identity"]))

    async def stop_identity(self) -> None:
        if self.identity is not None:
            app, server = self.identity
            self.identity = None
            await server.server.stop(0)
            await app.close()

    async def token(self, claims: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """Signed by identity's key ring (kept in its database, so tokens outlive a restart)."""
        assert self.identity is not None
        return md(await self.identity[0].deps.keys.sign(claims))

    async def officer(self) -> tuple[tuple[str, str], ...]:
        subject = Subject(str(uuid.uuid4()), ("RISK_OFFICER",), "LOW", True)
        return await self.token(user_claims(subject, int(time.time()), 600))

    async def payments_service(self) -> tuple[tuple[str, str], ...]:
        return await self.token(service_claims("payments", int(time.time()), 600))

    async def customer(self) -> tuple[str, str]:
        """A registered identity user with a wallet: (user id, account id)."""
        person = new_person()
        user = (
            await self.ids.RegisterUser(
                id_pb.RegisterUserRequest(
                    idempotency_key=key(),
                    kind=id_pb.USER_KIND_PERSONAL,
                    legal_name=person.legal_name,
                    id_number=person.id_number,
                    phone=person.phone,
                    email=person.email,
                    password="correct horse battery",
                    locale="zh-CN",
                )
            )
        ).user.user_id
        owner = await self.token(user_claims(Subject(user, ("PERSONAL",), "LOW", True), int(time.time()), 600))
        account = (
            await self.pay.OpenAccount(
                pay_pb.OpenAccountRequest(
                    idempotency_key=key(), owner_id=user, kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET, currency_code="CNY"
                ),
                metadata=owner,
            )
        ).account.account_id
        return user, account

    async def critical(self, user: str, account: str) -> None:
        """Block-list the user, then a payment of theirs: a critical warning opens an incident."""
        await self.risk.AddBlockListEntry(
            pb.AddBlockListEntryRequest(
                idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_USER, value=user, reason="confirmed fraud"
            ),
            metadata=await self.officer(),
        )
        assessed = await self.risk.AssessPayment(
            payment(user, payer_account_id=account, amount=cny(1_000)),
            metadata=await self.payments_service(),
            timeout=10,
        )
        assert assessed.assessment.warning_level == pb.WARNING_LEVEL_CRITICAL

    async def tier(self, user: str) -> int:
        reply = await self.ids.GetUser(id_pb.GetUserRequest(user_id=user), metadata=await self.officer())
        return reply.user.risk_tier


async def count(url: str, table: Any, *where: Any) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)
    finally:
        await engine.dispose()


async def incident(url: str, user: str) -> Any:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(select(alerts).where(alerts.c.user_id == user))).one_or_none()
    finally:
        await engine.dispose()


async def tier_changes(mesh: Tiering, user: str) -> list[dict[str, Any]]:
    engine = create_engine(mesh.urls["identity"])
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(identity_outbox.c.payload).where(
                    identity_outbox.c.event_type == TIER_CHANGED, identity_outbox.c.aggregate_id == user
                )
            )
            return [dict(r.payload) for r in rows]
    finally:
        await engine.dispose()


async def freezes(mesh: Tiering, account: str) -> int:
    return await count(
        mesh.urls["payments"],
        payments_outbox,
        payments_outbox.c.event_type == "payments.account.frozen.v1",
        payments_outbox.c.aggregate_id == account,
    )


@asynccontextmanager
async def tiering_mesh(databases: Any, tmp: Path) -> AsyncIterator[Tiering]:
    """Ports reserved first, so every service can name the others before they start."""
    ports = {name: free_port() for name in ("identity", "notify", "risk", "payments")}
    targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    urls = {name: await databases.new(name) for name in ports}

    def common(name: str) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": ports[name],
            "data_dir": tmp / name,
            "database_url": urls[name],
            "shutdown_grace_seconds": 0.5,
            "auth_mode": "enforce",
            "service_name": name,
            "service_secret": SERVICE_SECRET,
            "identity_target": targets["identity"],
        }

    settings: dict[str, Any] = {
        "identity": identity_settings(
            tmp / "identity", urls["identity"], port=ports["identity"], notify_target=targets["notify"]
        ),
        "notify": ServiceSettings(**common("notify")),
        "risk": RiskSettings(
            **common("risk"),
            payments_target=targets["payments"],
            notify_target=targets["notify"],
            risk_rules_poll_seconds=0.1,
            risk_emergency_poll_seconds=0.1,
        ),
        "payments": PaymentsSettings(
            **common("payments"), risk_target=targets["risk"], notify_target=targets["notify"]
        ),
    }
    async with AsyncExitStack() as stack:
        mesh = Tiering(settings, urls, {})
        for name, build in (("notify", notify_app.build), ("risk", risk_app.build), ("payments", payments_app.build)):
            app = await build(settings[name])
            stack.push_async_callback(app.close)
            server = await start_app(app, settings[name])
            stack.push_async_callback(server.server.stop, 0)
        await mesh.start_identity()
        stack.push_async_callback(mesh.stop_identity)
        for name, target in targets.items():
            mesh.channels[name] = grpc.aio.insecure_channel(target)
            stack.push_async_callback(mesh.channels[name].close)
        yield mesh


async def test_an_incident_raises_the_payers_tier_once(databases, tmp_path: Path) -> None:
    """A critical payment freezes the account and makes the payer HIGH at identity, with one tier change
    (reason RISK_EVENT). A second critical payment joins the incident; repeating the call with the incident's
    key, as a replica that crashed before recording it would, is a replay at identity."""
    async with tiering_mesh(databases, tmp_path) as mesh:
        user, account = await mesh.customer()
        await mesh.critical(user, account)
        await mesh.risk.AssessPayment(
            payment(user, payer_account_id=account), timeout=10, metadata=await mesh.payments_service()
        )
        await wait_until(
            lambda: count(mesh.urls["risk"], alerts, alerts.c.emergency_response_done.is_(True)), timeout=15
        )
        assert await mesh.tier(user) == id_pb.RISK_TIER_HIGH

        row = await incident(mesh.urls["risk"], user)
        channel = open_channel(
            f"127.0.0.1:{mesh.settings['identity'].port}",
            mesh.settings["risk"],
            idempotent_methods=IDENTITY_IDEMPOTENT_METHODS,
        )
        try:
            await IdentityClient(channel).raise_tier(user, tier_key(row.alert_id), timeout=5)
        finally:
            await channel.close()

        changes = await tier_changes(mesh, user)
        assert row.tier_raised_at is not None and row.frozen_at is not None and not row.parked
        assert await freezes(mesh, account) == 1
    assert changes == [{"user_id": user, "tier": "HIGH", "reason": "RISK_EVENT"}]


async def test_identity_down_the_tier_is_retried_until_it_answers(databases, tmp_path: Path) -> None:
    """Identity stops after risk holds its service token: the freeze goes through, the tier call fails and is
    retried with backoff from the incident row; once identity is back the tier is raised, once."""
    async with tiering_mesh(databases, tmp_path) as mesh:
        warm_user, warm_account = await mesh.customer()  # a first incident: risk now holds a service token
        await mesh.critical(warm_user, warm_account)
        await wait_until(
            lambda: count(mesh.urls["risk"], alerts, alerts.c.emergency_response_done.is_(True)), timeout=15
        )
        user, account = await mesh.customer()
        officer, payments_token = await mesh.officer(), await mesh.payments_service()
        await mesh.risk.AddBlockListEntry(
            pb.AddBlockListEntryRequest(
                idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_USER, value=user, reason="confirmed fraud"
            ),
            metadata=officer,
        )

        await mesh.stop_identity()
        await mesh.risk.AssessPayment(payment(user, payer_account_id=account), metadata=payments_token, timeout=10)

        async def frozen_and_retrying() -> bool:
            row = await incident(mesh.urls["risk"], user)
            return (
                row is not None
                and row.frozen_at is not None
                and row.attempts >= 2
                and row.tier_raised_at is None
                and row.last_error.startswith("tier:")
            )

        await wait_until(frozen_and_retrying, timeout=15)
        await mesh.start_identity()

        async def both_done() -> bool:
            return await count(mesh.urls["risk"], alerts, alerts.c.emergency_response_done.is_(True)) == 2

        await wait_until(both_done, timeout=20)
        assert await mesh.tier(user) == id_pb.RISK_TIER_HIGH
        assert await freezes(mesh, account) == 1
        changes = await tier_changes(mesh, user)
        row = await incident(mesh.urls["risk"], user)
    assert changes == [{"user_id": user, "tier": "HIGH", "reason": "RISK_EVENT"}]
    assert not row.parked and row.last_error == ""


async def test_a_user_identity_does_not_know_parks_the_incident_after_the_freeze(databases, tmp_path: Path) -> None:
    """Identity refusing for good (USER_NOT_FOUND) is not retried: the account stays frozen, the incident is
    parked for an operator with the reason, and no tier changes anywhere."""
    async with tiering_mesh(databases, tmp_path) as mesh:
        stranger = str(uuid.uuid4())  # holds a token and a wallet, but identity never registered them
        owner = await mesh.token(user_claims(Subject(stranger, ("PERSONAL",), "LOW", True), int(time.time()), 600))
        account = (
            await mesh.pay.OpenAccount(
                pay_pb.OpenAccountRequest(
                    idempotency_key=key(),
                    owner_id=stranger,
                    kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                    currency_code="CNY",
                ),
                metadata=owner,
            )
        ).account.account_id
        await mesh.critical(stranger, account)
        await wait_until(lambda: count(mesh.urls["risk"], alerts, alerts.c.parked.is_(True)), timeout=15)
        row = await incident(mesh.urls["risk"], stranger)
        assert await freezes(mesh, account) == 1
        assert await tier_changes(mesh, stranger) == []
    assert (row.last_error, row.attempts, row.tier_raised_at) == ("USER_NOT_FOUND", 0, None)
    assert row.frozen_at is not None and not row.emergency_response_done

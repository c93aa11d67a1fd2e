"""Risk consumes identity's user events (issue 25 fan-out, issue 21's geography rule), with real servers on
ephemeral ports and auth enforced: identity's relays deliver to notify and to risk, each from its own state.

- A user identity verifies reaches risk with a country of residence; a payment through payments from another
  country's IP fires GEO_MISMATCH (payments never sends the home country); erasure reaches risk.
- Risk down: notify still gets every event at once; back, risk gets each event exactly once, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import select

from finmesh.common.v1 import money_pb2
from finmesh.fakes.registry import FakeRegistry
from finmesh.identity import app as identity_app
from finmesh.identity.store.schema import outbox, outbox_deliveries
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.runner import start_app
from finmesh.risk import app as risk_app
from finmesh.risk.store.schema import assessments, consumed_events, erasures, known_devices, user_profiles
from tests.identity.harness import (
    SERVICE_SECRET,
    IdentityEnv,
    RecordingNotify,
    RecordingRisk,
    free_port,
    identity_settings,
    key,
    md,
    new_person,
    serve_recorder,
    stop_server,
)
from tests.rabbitmq import Vhost
from tests.reliability.tcp_proxy import TcpProxy

RISK_TYPES = {"identity.user.verified.v1", "identity.user.tier_changed.v1", "identity.user.erased.v1"}


@dataclass
class Mesh:
    identity: IdentityEnv
    risk: Any  # the risk app (its engine is read directly: what risk keeps is the point)
    payments: pay_grpc.PaymentsServiceStub
    proxy: TcpProxy  # between identity's relay and risk's intake


def _service(tmp: Path, name: str, url: str, identity_target: str, **targets: str) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": tmp / name,
        "shutdown_grace_seconds": 0.5,
        "database_url": url,
        "auth_mode": "enforce",
        "service_name": name,
        "service_secret": SERVICE_SECRET,
        "identity_target": identity_target,
        **targets,
    }


@asynccontextmanager
async def _mesh(databases: Any, tmp: Path, transport: Vhost | None = None) -> AsyncIterator[Mesh]:
    """Real identity, risk and payments; notify is a recorder (it hands identity the SMS codes). Identity's
    events reach risk through a proxy the test can take down (or, with `transport`, through the broker on the
    test's vhost); its onboarding calls go to risk directly."""
    broker = transport.settings() if transport is not None else {}
    async with AsyncExitStack() as stack:
        identity_target = f"127.0.0.1:{free_port()}"
        notify = RecordingNotify()
        notify_server = await serve_recorder(
            notify,
            notify_grpc.add_NotifyServiceServicer_to_server,
            notify_pb.DESCRIPTOR.services_by_name["NotifyService"],
            identity_target,
        )
        stack.push_async_callback(stop_server, notify_server)
        notify_target = f"127.0.0.1:{notify_server.port}"
        risk_settings = ServiceSettings(**_service(tmp, "risk", await databases.new("risk"), identity_target), **broker)
        risk = await risk_app.build(risk_settings)
        stack.push_async_callback(risk.close)
        risk_server = await start_app(risk, risk_settings)
        stack.push_async_callback(stop_server, risk_server)
        if risk.events is not None:  # its queues exist before identity publishes
            await asyncio.wait_for(risk.events.ready.wait(), 15)
        risk_target = f"127.0.0.1:{risk_server.port}"
        proxy = await TcpProxy(risk_server.port).start()
        stack.push_async_callback(lambda: proxy.stop())
        pay_settings = PaymentsSettings(
            **_service(
                tmp,
                "payments",
                await databases.new("payments"),
                identity_target,
                risk_target=risk_target,
                notify_target=notify_target,
            )
        )
        payments = await payments_app.build(pay_settings)
        stack.push_async_callback(payments.close)
        pay_server = await start_app(payments, pay_settings)
        stack.push_async_callback(stop_server, pay_server)
        registry = stack.enter_context(FakeRegistry())
        url = await databases.new("identity")
        settings = identity_settings(
            tmp,
            url,
            port=int(identity_target.rsplit(":", 1)[1]),
            notify_target=notify_target,
            risk_target=risk_target,
            # Only the event path goes through the proxy: FINMESH_EVENTS_CONSUMER_TARGETS wins over RISK_TARGET.
            events_consumer_targets=f"risk={proxy.target}",
            identity_registry_url=registry.url,
            identity_registry_api_key=registry.api_key,
            **broker,
        )
        app = await identity_app.build(settings)
        stack.push_async_callback(app.close)
        server = await start_app(app, settings)
        stack.push_async_callback(stop_server, server)
        channel = grpc.aio.insecure_channel(identity_target)
        stack.push_async_callback(channel.close)
        pay_channel = grpc.aio.insecure_channel(f"127.0.0.1:{pay_server.port}")
        stack.push_async_callback(pay_channel.close)
        env = IdentityEnv(
            app, server, channel, id_grpc.IdentityServiceStub(channel), notify, RecordingRisk(), registry, settings, url
        )
        yield Mesh(env, risk, pay_grpc.PaymentsServiceStub(pay_channel), proxy)


async def _eventually(fetch: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await fetch()
        if ok(value):
            return value
        if loop.time() > end:
            raise AssertionError(f"not within {timeout}s; last value: {value}")
        await asyncio.sleep(0.05)


async def _now(value: Any) -> Any:
    return value


async def _rows(engine: Any, query: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def _country(mesh: Mesh, user_id: str) -> str:
    rows = await _rows(
        mesh.risk.engine, select(user_profiles.c.country_of_residence).where(user_profiles.c.user_id == user_id)
    )
    return rows[0][0] if rows else ""


async def _pay(mesh: Mesh, payer_id: str, payee_id: str, token: str, payee_token: str, ip_country: str) -> str:
    async def wallet(owner: str, owner_token: str) -> str:
        reply = await mesh.payments.OpenAccount(
            pay_pb.OpenAccountRequest(
                idempotency_key=key(), owner_id=owner, kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET, currency_code="CNY"
            ),
            metadata=md(owner_token),
        )
        return reply.account.account_id

    src, dst = await wallet(payer_id, token), await wallet(payee_id, payee_token)
    await mesh.payments.TopUp(
        pay_pb.TopUpRequest(
            idempotency_key=key(),
            account_id=src,
            channel="test_bank",
            amount=money_pb2.Money(currency_code="CNY", minor_units=10_000),
        ),
        metadata=md(token),
    )
    paid = await mesh.payments.CreatePayment(
        pay_pb.CreatePaymentRequest(
            idempotency_key=key(),
            payer_account_id=src,
            payee_account_id=dst,
            amount=money_pb2.Money(currency_code="CNY", minor_units=1_000),
            capture_mode=pay_pb.CAPTURE_MODE_AUTOMATIC,
            risk_context=pay_pb.RiskContext(device_id="dev-42", ip_address="203.0.113.9", ip_country=ip_country),
        ),
        metadata=md(token),
    )
    return paid.payment.payment_id


async def _reasons(mesh: Mesh, payment_id: str) -> tuple[str, set[str]]:
    [row] = await _rows(
        mesh.risk.engine,
        select(assessments.c.home_country, assessments.c.reasons).where(assessments.c.payment_id == payment_id),
    )
    return row.home_country, {r["code"] for r in row.reasons}


async def test_a_verified_users_country_reaches_risk_and_fires_the_geography_rule_through_payments(
    databases, tmp_path: Path, events_transport: Vhost | None
) -> None:
    """Identity verifies a user; its verified event carries the country of residence (CN) to risk, through
    identity's relay to risk (gRPC) or risk's own queues on identity's exchange (RabbitMQ). A payment through
    payments from a US address is scored GEO_MISMATCH; one from CN is not. Erasing the user then reaches
    risk: their devices and addresses are gone, the erasure recorded."""
    async with _mesh(databases, tmp_path, events_transport) as mesh:
        env = mesh.identity
        payer, payee = new_person(), new_person()
        payer_id, payee_id = await env.onboard(payer), await env.onboard(payee)
        assert await _eventually(lambda: _country(mesh, payer_id), lambda c: c == "CN") == "CN"
        token, payee_token = (await env.login(payer)).access_token, (await env.login(payee)).access_token

        abroad = await _pay(mesh, payer_id, payee_id, token, payee_token, ip_country="US")
        home, codes = await _reasons(mesh, abroad)
        assert (home, "GEO_MISMATCH" in codes) == ("CN", True), codes
        at_home = await _pay(mesh, payer_id, payee_id, token, payee_token, ip_country="CN")
        assert "GEO_MISMATCH" not in (await _reasons(mesh, at_home))[1]

        admin = await env.mint(["admin"])
        await env.stub.EraseUser(
            id_pb.EraseUserRequest(idempotency_key=key(), user_id=payer_id, reason="customer request"),
            metadata=md(admin),
        )
        erased = await _eventually(
            lambda: _rows(mesh.risk.engine, select(erasures).where(erasures.c.user_id == payer_id)), bool
        )
        assert erased[0].devices_deleted == 1 and erased[0].assessments_anonymised == 2, erased
        kept = await _rows(
            mesh.risk.engine,
            select(assessments.c.ip_address, assessments.c.device_id, assessments.c.score).where(
                assessments.c.user_id == payer_id
            ),
        )
        assert [(r.ip_address, r.device_id) for r in kept] == [("", ""), ("", "")]  # scores stay
        assert await _rows(mesh.risk.engine, select(known_devices).where(known_devices.c.user_id == payer_id)) == []
        assert await _country(mesh, payer_id) == ""


async def test_risk_down_holds_back_nobody_and_gets_every_event_once_when_back(databases, tmp_path: Path) -> None:
    """With risk's intake unreachable, identity's events still reach notify at once and wait for risk without
    being charged attempts; once risk is back each of them arrives exactly once, in order per user."""
    async with _mesh(databases, tmp_path) as mesh:
        env = mesh.identity
        port = mesh.proxy.port
        await mesh.proxy.stop()  # connections refused: risk is down
        people = [new_person() for _ in range(3)]
        ids = [await env.onboard(p) for p in people]
        admin = await env.mint(["admin"])
        await env.stub.EraseUser(
            id_pb.EraseUserRequest(idempotency_key=key(), user_id=ids[0], reason="customer request"),
            metadata=md(admin),
        )
        # Notify got every event meanwhile: three registered, three verified, tiers, one erasure.
        written = await _rows(env.app.engine, select(outbox))
        for_notify = sorted(r.event_type for r in written)
        await _eventually(lambda: _now(sorted(env.notify.events)), lambda got: got == for_notify)
        assert await _rows(mesh.risk.engine, select(consumed_events)) == []
        waiting = await _rows(env.app.engine, select(outbox_deliveries))
        assert waiting and all(r.delivered_at is None and r.attempts == 0 and not r.dead for r in waiting), waiting

        mesh.proxy = await TcpProxy(mesh.proxy.target_port, port=port).start()  # risk is back
        expected = sorted((r.event_id, r.aggregate_id, r.sequence) for r in written if r.event_type in RISK_TYPES)
        await _eventually(
            lambda: _rows(mesh.risk.engine, select(consumed_events)), lambda rows: len(rows) >= len(expected), 20
        )
        await asyncio.sleep(0.5)  # a redelivery, had there been one, would be answered DUPLICATE: never a new row
        taken = await _rows(mesh.risk.engine, select(consumed_events).order_by(consumed_events.c.received_at))
        assert sorted((r.event_id, r.aggregate_id, r.sequence) for r in taken) == expected
        for user in ids:
            sequences = [r.sequence for r in taken if r.aggregate_id == user]
            assert sequences == sorted(sequences), (user, sequences)
        assert {await _country(mesh, user) for user in ids} == {"", "CN"}  # the erased user's country is gone
        assert await _country(mesh, ids[1]) == "CN"

"""Emergency response: a critical warning freezes the payer's account through payments exactly once,
and alerts an operator through risk's outbox exactly once."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from finmesh.notify.store.schema import received_events
from finmesh.payments.store.schema import outbox as payments_outbox
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.guard import reason_of
from finmesh.risk.clients.payments import PaymentsClient
from finmesh.risk.store.schema import alerts
from finmesh.risk.store.schema import outbox as risk_outbox
from finmesh.risk.usecases.assessing import ALERT_EVENT
from finmesh.risk.usecases.emergency import freeze_key
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import cny, key, payment, wait_until
from tests.risk.mesh import count_rows, open_wallet, owner, risk_mesh, settle_background


async def _block(risk, user: str) -> None:
    await risk.stub.AddBlockListEntry(
        pb.AddBlockListEntryRequest(
            idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_USER, value=user, reason="confirmed fraud"
        )
    )


async def _done_alerts(risk) -> list[pb.Alert]:
    return [a for a in (await risk.stub.ListAlerts(pb.ListAlertsRequest())).alerts if a.emergency_response_done]


async def test_critical_payment_freezes_once_and_alerts_once(databases, tmp_path: Path) -> None:
    """A block-listed payer's payment is declined; the account is frozen once and one alert reaches notify.

    A second critical payment joins the open incident, and repeating the
    freeze with the incident's key (as after a crash) is a replay at payments.
    """
    async with risk_mesh(databases, tmp_path) as mesh:
        pay = mesh.pay_stub()
        fraudster = owner()
        payer = await open_wallet(pay, fraudster, top_up=100_000)
        payee = await open_wallet(pay, owner())
        await _block(mesh.risk, fraudster)
        # A second critical payment straight to risk before the freeze lands: same incident.
        await mesh.risk.assess(payment(fraudster, payer_account_id=payer))
        with pytest.raises(grpc.aio.AioRpcError) as declined:
            await pay.CreatePayment(
                pay_pb.CreatePaymentRequest(
                    idempotency_key=key(), payer_account_id=payer, payee_account_id=payee, amount=cny(1_000)
                )
            )
        assert reason_of(declined.value) in ("RISK_DECLINED", "ACCOUNT_FROZEN")

        await wait_until(lambda: _done_alerts(mesh.risk))
        account = (await pay.GetAccount(pay_pb.GetAccountRequest(account_id=payer))).account
        assert account.status == pay_pb.ACCOUNT_STATUS_FROZEN
        with pytest.raises(grpc.aio.AioRpcError) as frozen:
            await pay.CreatePayment(
                pay_pb.CreatePaymentRequest(
                    idempotency_key=key(), payer_account_id=payer, payee_account_id=payee, amount=cny(1_000)
                )
            )
        assert reason_of(frozen.value) == "ACCOUNT_FROZEN"

        [alert] = (await mesh.risk.stub.ListAlerts(pb.ListAlertsRequest())).alerts
        assert (alert.level, alert.account_id, alert.user_id) == (pb.WARNING_LEVEL_CRITICAL, payer, fraudster)
        # A replica that froze but crashed before recording it calls again with the same key: a replay.
        channel = open_channel(mesh.payments_target, mesh.payments_settings)
        try:
            await PaymentsClient(channel).freeze(payer, freeze_key(alert.alert_id), timeout=5)
        finally:
            await channel.close()
        await settle_background()

        frozen_events = payments_outbox.c.event_type == "payments.account.frozen.v1"
        assert (
            await count_rows(
                mesh.urls["payments"], payments_outbox, frozen_events, payments_outbox.c.aggregate_id == payer
            )
            == 1
        )
        assert await count_rows(mesh.urls["risk"], risk_outbox, risk_outbox.c.event_type == ALERT_EVENT) == 1
        assert await count_rows(mesh.urls["risk"], risk_outbox, risk_outbox.c.delivered_at.is_(None)) == 0
        assert await count_rows(mesh.urls["notify"], received_events, received_events.c.event_type == ALERT_EVENT) == 1


async def test_freeze_is_retried_until_payments_answers(databases, tmp_path: Path) -> None:
    """Payments down when the incident opens: the incident stays unfinished, then freezes once payments is back."""
    async with risk_mesh(databases, tmp_path) as mesh:
        pay = mesh.pay_stub()
        victim = owner()
        payer = await open_wallet(pay, victim)
        await mesh.stop_payments()
        await _block(mesh.risk, victim)
        critical = await mesh.risk.assess(payment(victim, payer_account_id=payer))
        assert critical.warning_level == pb.WARNING_LEVEL_CRITICAL
        await wait_until(lambda: count_rows(mesh.urls["risk"], alerts, alerts.c.attempts >= 1))
        assert await _done_alerts(mesh.risk) == []

        await mesh.start_payments()
        await wait_until(lambda: _done_alerts(mesh.risk), timeout=15)
        account = (await pay.GetAccount(pay_pb.GetAccountRequest(account_id=payer))).account
        assert account.status == pay_pb.ACCOUNT_STATUS_FROZEN
        assert (
            await count_rows(
                mesh.urls["payments"], payments_outbox, payments_outbox.c.event_type == "payments.account.frozen.v1"
            )
            == 1
        )


async def test_unknown_account_parks_the_incident(databases, tmp_path: Path) -> None:
    """Payments refusing the freeze for good (no such account) parks the incident instead of retrying forever."""
    async with risk_mesh(databases, tmp_path) as mesh:
        await _block(mesh.risk, "ghost")
        await mesh.risk.assess(payment("ghost", payer_account_id="no-such-account"))
        await wait_until(
            lambda: count_rows(
                mesh.urls["risk"], alerts, alerts.c.parked.is_(True), alerts.c.last_error == "ACCOUNT_NOT_FOUND"
            )
        )
        await settle_background()
        [alert] = (await mesh.risk.stub.ListAlerts(pb.ListAlertsRequest())).alerts
        assert not alert.emergency_response_done
        assert await count_rows(mesh.urls["risk"], alerts, alerts.c.attempts == 0) == 1  # no retries

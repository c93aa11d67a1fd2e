"""`finmesh up` restarts a crashed service with backoff, as a cluster would, and gives up only on a crash loop."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from finmesh.cli.mesh import is_serving, load_fakes
from finmesh.cli.slice import SliceResult, bearer, run_slice
from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from tests.e2e.finmesh_up import FinmeshUp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def up_factory(tmp_path: Path):
    started: list[FinmeshUp] = []

    def start(*flags: str) -> FinmeshUp:
        started.append(FinmeshUp(tmp_path / "mesh", *flags))
        return started[-1]

    yield start
    for up in started:
        up.close()


def test_a_killed_service_comes_back_on_its_port_and_answers(up_factory) -> None:
    """SIGKILL payments after the demo flow paid through it: the runner says so and restarts it on the same port
    and data dir; it answers health SERVING, the balances the demo left and a new payment; the other services
    kept running; Ctrl-C then drains every service cleanly."""
    up = up_factory()
    services = up.wait_ready()
    payments, others = services["payments"], {n: s.pid for n, s in services.items() if n != "payments"}
    demo = asyncio.run(run_slice(up.targets(), load_fakes(up.data_dir)["sms"], top_up=10_000, pay=2_500))

    os.kill(payments.pid, signal.SIGKILL)
    up.expect(r"^payments exited \(killed by SIGKILL\) after [\d.]+s; restarting it in 0\.5s \(attempt 1 of 5\)", 10)
    restarted = up.expect(r"^\s+payments\s+(\S+)\s+pid (\d+)\s+restarted \(attempt 1\)", 10)
    assert restarted[1] == payments.target and int(restarted[2]) != payments.pid
    up.expect(r"^payments SERVING again", 60)

    assert is_serving(payments.target)
    assert asyncio.run(_pay_and_read_balances(payments.target, demo, 1_000)) == [6_500, 3_500]
    # The restarted process serves its metrics where `finmesh up` said, so Prometheus' target still holds.
    assert payments.metrics.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(payments.metrics, timeout=5) as reply:
        exposition = reply.read().decode()
    assert 'rpc_method="CreatePayment"' in exposition and 'service_name="payments"' in exposition
    assert {n: s.pid for n, s in up.services.items() if n != "payments"} == others, "only payments restarted"
    assert up.interrupt() == 0
    assert up.output[-1] == "stopped: " + ", ".join(f"{n}=0" for n in services), up.output[-1]


async def _pay_and_read_balances(target: str, demo: SliceResult, amount: int) -> list[int]:
    """The demo's payer pays the payee again; then both balances, each read by its owner."""
    payer, payee = demo.tokens[demo.payer_user_id], demo.tokens[demo.payee_user_id]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PaymentsServiceStub(channel)
        paid = await stub.CreatePayment(
            pb.CreatePaymentRequest(
                idempotency_key=f"after-restart-{demo.payment_id}",
                payer_account_id=demo.payer_account_id,
                payee_account_id=demo.payee_account_id,
                amount=money_pb2.Money(currency_code="CNY", minor_units=amount),
                capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
            ),
            metadata=bearer(payer),
            timeout=10,
        )
        assert paid.payment.status == pb.PAYMENT_STATUS_CAPTURED, paid
        accounts = [
            await stub.GetAccount(pb.GetAccountRequest(account_id=account), metadata=bearer(token))
            for account, token in ((demo.payer_account_id, payer), (demo.payee_account_id, payee))
        ]
    return [a.account.balance.available_minor_units for a in accounts]


def _hold_port(target: str, seconds: float) -> socket.socket:
    """Listen on `target`'s port as soon as its service has let go of it, so each restart fails to bind."""
    port = int(target.rsplit(":", 1)[1])
    deadline = time.monotonic() + seconds
    while True:
        holder = socket.socket()  # no SO_REUSEPORT: gRPC's own socket (which sets it) cannot share the port
        try:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            return holder
        except OSError as error:
            holder.close()
            if error.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_a_service_that_crashes_at_once_every_time_stops_the_mesh(up_factory) -> None:
    """With its port taken, payments crashes at every start: restarted `--restarts` times with growing delays,
    then the runner gives up, names the service and its log, and stops the others cleanly."""
    up = up_factory("--restarts", "2", "--restart-delay", "0.1")
    services = up.wait_ready()
    os.kill(services["payments"].pid, signal.SIGKILL)
    with _hold_port(services["payments"].target, 5):
        up.expect(r"^payments exited \(killed by SIGKILL\) .* restarting it in 0\.1s \(attempt 1 of 2\)", 10)
        up.expect(r"^payments exited \(exit code \d+\) .* restarting it in 0\.2s \(attempt 2 of 2\)", 30)
        up.expect(
            r"^payments exited \(exit code \d+\) after [\d.]+s: 3 fast crashes in a row; giving up, "
            r"stopping the mesh \(see .*payments\.log\)",
            30,
        )
        assert up.wait_exit(30) == 1
    stopped = up.output[-1]
    assert stopped.startswith("stopped: ") and all(f"{n}=0" in stopped for n in ("identity", "risk", "notify")), stopped

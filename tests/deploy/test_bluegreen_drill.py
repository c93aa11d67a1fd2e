"""The local blue-green drill: payments blue → green → blue under a steady load, with real processes on loopback.

A forwarder stands in for the Kubernetes Service (new connections go to the
active color). Servers bound connection age to 2 s, so pinned HTTP/2
connections follow a flip, and drain on SIGTERM. The rollback is done the
hard way: green gets SIGTERM right after the flip, while it still carries
connections and calls.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from finmesh.drill.collector import SpanCollector
from finmesh.drill.forwarder import Forwarder
from finmesh.drill.load import LoadShape, PaymentLoad
from finmesh.drill.processes import DrainReport, ServiceProcess, start_service, terminate, wait_serving
from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.auth import SERVICE_SECRET, ActingAs, Book, Issuer
from tests.deploy.drill_books import check_books, open_accounts, payment_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

# 32 payers keep each one under risk's velocity rule (20 payments per user in 10 minutes).
PAYERS, PAYEES, TOP_UP = 32, 8, 1_000_000
# The drill stops the load after the rollback; the count only bounds it (80 s at this rate).
LOAD = LoadShape(count=2000, rate=25.0, clients=4)
CREATE_PAYMENT = "finmesh.payments.v1.PaymentsService/CreatePayment"
SERVER_SETTINGS = {
    # Short, so a flip moves pinned connections within seconds instead of minutes.
    "FINMESH_MAX_CONNECTION_AGE_SECONDS": "2",
    # Health says NOT_SERVING this long before the server stops taking calls.
    "FINMESH_DRAIN_DELAY_SECONDS": "1",
    "FINMESH_SHUTDOWN_GRACE_SECONDS": "5",
    "FINMESH_LOG_LEVEL": "info",
    # Auth enforced as in production: keys and service tokens from the test issuer (tests.auth), the
    # load client presents each payer's token.
    "FINMESH_AUTH_MODE": "enforce",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_EXPORTER_OTLP_INSECURE": "true",
}


@pytest.fixture
def collector() -> Iterator[SpanCollector]:
    collector = SpanCollector().start()
    yield collector
    collector.stop()


class Drill:
    """The processes of one drill run; stop() leaves nothing running whatever happened."""

    def __init__(self, tmp: Path, collector: SpanCollector, issuer: Issuer) -> None:
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir()
        self.env = {
            **SERVER_SETTINGS,
            "FINMESH_DATA_DIR": str(tmp / "data"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "FINMESH_IDENTITY_TARGET": issuer.target,
            "FINMESH_SERVICE_SECRET": SERVICE_SECRET,
        }
        self.processes: list[ServiceProcess] = []

    def start(self, service: str, color: str, version: str, label: str, **env: str) -> ServiceProcess:
        proc = start_service(
            service, color=color, version=version, env={**self.env, **env}, log_dir=self.log_dir, label=label
        )
        self.processes.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.processes:
            if proc.process.poll() is None:
                proc.process.terminate()
        for proc in self.processes:
            try:
                proc.process.wait(15)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()


def _served_during_drain(spans: list[Any], color: str, version: str, drain: DrainReport) -> tuple[int, int]:
    """(calls in flight at SIGTERM, calls started after SIGTERM) that this color finished successfully."""
    mine = [
        s
        for s in spans
        if s.service == "payments"
        and s.color == color
        and s.version == version
        and s.kind == "SPAN_KIND_SERVER"
        and s.name == CREATE_PAYMENT
        and s.ok
    ]
    in_flight = sum(1 for s in mine if s.start_ns < drain.sigterm_ns < s.end_ns)
    after = sum(1 for s in mine if s.start_ns >= drain.sigterm_ns)
    return in_flight, after


async def test_blue_green_drill_under_load(databases: Any, tmp_path: Path, collector: SpanCollector) -> None:
    """Blue → green → blue while payments flow: none fails, none is lost or doubled, the books balance,
    each color drains (NOT_SERVING first, calls finished, exit 0), and spans and logs carry their color."""
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    urls = {name: await databases.new(name) for name in ("notify", "risk", "payments")}
    issuer, book = await Issuer().start(), Book()
    drill = Drill(tmp_path, collector, issuer)
    forwarder: Forwarder | None = None
    try:
        notify = drill.start("notify", "local", "1", "notify", FINMESH_DATABASE_URL=urls["notify"])
        risk = drill.start("risk", "local", "1", "risk", FINMESH_DATABASE_URL=urls["risk"])
        await asyncio.gather(wait_serving(notify), wait_serving(risk))
        payments_env = {
            "FINMESH_DATABASE_URL": urls["payments"],
            "FINMESH_RISK_TARGET": risk.target,
            "FINMESH_NOTIFY_TARGET": notify.target,
            "FINMESH_CHANNEL_SWEEP_INTERVAL_SECONDS": "3600",
        }
        blue = drill.start("payments", "blue", "1", "payments-blue", **payments_env)
        await wait_serving(blue)
        forwarder = Forwarder(blue.target)
        await forwarder.start()
        payers, payees = await open_accounts(
            forwarder.target, run_id, issuer, book, payers=PAYERS, payees=PAYEES, top_up=TOP_UP
        )

        payments_load = PaymentLoad(
            forwarder.target, payers, payees, run_id, LOAD, interceptors=[ActingAs(issuer, book)]
        )
        load = asyncio.create_task(payments_load.run())
        # Green starts against the same database while blue serves the load.
        green = drill.start("payments", "green", "2", "payments-green", **payments_env)
        green_ready = await wait_serving(green)

        # Blue → green: flip, let connection age move the pinned connections, then drain blue.
        forwarder.switch(green.target)
        blue_moved_after = await forwarder.wait_idle(blue.target, timeout=10)
        assert blue_moved_after is not None, f"connections still pinned to blue 10 s after the flip: {forwarder.open}"
        blue_drain = await terminate(blue)

        # Green → blue, at once: a new blue, flip, and SIGTERM green while it still carries the load.
        blue2 = drill.start("payments", "blue", "1", "payments-blue-2", **payments_env)
        await wait_serving(blue2)
        forwarder.switch(blue2.target)
        green_open_at_sigterm = forwarder.open[green.target]
        assert not load.done(), "the load ended before the rollback: the drill would prove nothing about it"
        green_drain = await terminate(green)
        await asyncio.sleep(2)  # payments keep flowing on the rolled-back blue for a moment
        payments_load.stop()

        report = await load
        rows, totals = await payment_rows(urls["payments"], run_id)
        await check_books(blue2.target, report, payers, payees, issuer, book, TOP_UP)
        drill.stop()  # flushes every exporter, so the collector has all spans
        exit_codes = {proc.name: proc.process.returncode for proc in drill.processes}
        elapsed = time.monotonic() - started
    finally:
        if forwarder is not None:
            await forwarder.close()
        drill.stop()
        await issuer.stop()

    figures = {
        "database": databases.kind,
        "load": report.summary(),
        "green ready after": f"{green_ready:.1f}s",
        "blue connections gone after flip": f"{blue_moved_after:.2f}s",
        "blue drain": blue_drain.summary(),
        "green connections open at its SIGTERM": green_open_at_sigterm,
        "green drain": green_drain.summary(),
        "connections routed": dict(forwarder.accepted),
        "connections refused": dict(forwarder.refused),
        "retried codes": Counter(c for r in report.records for c in r.retried_codes),
        "drill seconds": round(elapsed, 1),
    }
    print("\nblue-green drill: " + json.dumps(figures, default=str, indent=1))

    assert set(exit_codes.values()) == {0}, exit_codes
    # Zero failed calls after the client's retry policy.
    assert report.failed == [], [(r.index, r.attempts, r.error) for r in report.failed][:10]
    # Exactly once: one row per acknowledged call, the row the client was told about, and no row for anything else.
    by_description = Counter(description for _, description in rows)
    assert [d for d, n in by_description.items() if n > 1] == [], "payments doubled"
    assert {(r.payment_id, r.description) for r in report.acknowledged} == set(rows)
    assert all(total == 0 for total in totals.values()), f"ledger does not sum to zero: {totals}"

    # Each drain: health NOT_SERVING first, still answering calls during the drain delay, then exit 0.
    for drain in (blue_drain, green_drain):
        assert drain.returncode == 0, drain.summary()
        assert drain.not_serving_after is not None, drain.summary()
        assert drain.refused_after is None or drain.not_serving_after < drain.refused_after, drain.summary()

    spans = collector.spans
    green_in_flight, green_after = _served_during_drain(spans, "green", "2", green_drain)
    print(f"green finished {green_in_flight} calls in flight at SIGTERM and {green_after} more during its drain")
    assert green_in_flight + green_after > 0, "green had no calls to drain: the rollback did not test draining"
    _check_colors(spans, drill.processes)


def _check_colors(spans: list[Any], processes: list[ServiceProcess]) -> None:
    """Every span's resource and every log line name the deployment color and version of its process."""
    served = Counter(
        (s.color, s.version)
        for s in spans
        if s.service == "payments" and s.kind == "SPAN_KIND_SERVER" and s.name == CREATE_PAYMENT
    )
    assert served[("blue", "1")] > 0 and served[("green", "2")] > 0, served
    assert {(s.color, s.version) for s in spans if s.service == "payments"} == {("blue", "1"), ("green", "2")}
    assert {s.color for s in spans if s.service in ("risk", "notify")} <= {"local"}
    for proc in processes:
        lines = proc.log_lines()
        events = [line.get("event") for line in lines]
        assert lines and {(line.get("deployment_color"), line.get("service_version")) for line in lines} == {
            (proc.color, proc.version)
        }, proc.name
        # SIGTERM is handled: the runner logs the drain and a clean stop (docs/DEPLOY.md contract).
        assert "draining" in events and "stopped" in events, (proc.name, events[-5:])
        assert events.index("draining") < events.index("stopped"), proc.name


class _ScriptedStub:
    """A PaymentsService stub whose CreatePayment answers with the next scripted status code, or a reply."""

    def __init__(self, *outcomes: grpc.StatusCode | None) -> None:
        self._outcomes = list(outcomes)
        self.requests: list[pb.CreatePaymentRequest] = []

    async def CreatePayment(self, request: pb.CreatePaymentRequest, timeout: float) -> pb.CreatePaymentResponse:
        self.requests.append(request)
        code = self._outcomes.pop(0)
        if code is not None:
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)
        return pb.CreatePaymentResponse(payment=pb.Payment(payment_id="p-1", status=pb.PAYMENT_STATUS_CAPTURED))


async def _one_call(stub: _ScriptedStub) -> Any:
    load = PaymentLoad("unused:0", ["payer"], ["payee"], "run", LoadShape(attempts=4))
    record = load.record(0)
    await load._call(stub, record)  # type: ignore[arg-type]  # duck-typed: _call uses CreatePayment only
    return record


async def test_drill_client_retries_a_server_cancel_with_the_same_key() -> None:
    """A CANCELLED from a draining server (grpc cancels the calls it had not handed to the handler) is
    retried like UNAVAILABLE: the identical request, same idempotency key, until it is answered."""
    stub = _ScriptedStub(grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE, None)
    record = await _one_call(stub)
    assert (record.payment_id, record.retried_codes, record.error) == ("p-1", ["CANCELLED", "UNAVAILABLE"], "")
    assert len(stub.requests) == 3 and all(r == stub.requests[0] for r in stub.requests), stub.requests
    assert stub.requests[0].idempotency_key == record.key


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_drill_client_reports_other_errors_without_retrying(code: grpc.StatusCode) -> None:
    """Any other code is a failure the drill reports, after one attempt."""
    stub = _ScriptedStub(code, None)
    record = await _one_call(stub)
    assert (record.acknowledged, record.attempts, record.error) == (False, 1, f"{code.name}: {code.name}")


async def test_drill_client_gives_up_after_its_attempts() -> None:
    """Retries are bounded: a server that keeps cancelling fails the call after shape.attempts tries."""
    stub = _ScriptedStub(*[grpc.StatusCode.CANCELLED] * 4)
    record = await _one_call(stub)
    assert (record.acknowledged, record.attempts, record.error) == (False, 4, "CANCELLED: CANCELLED")

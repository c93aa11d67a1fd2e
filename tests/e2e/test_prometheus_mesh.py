"""The mesh as processes, scraped by a real Prometheus every second, with the SLO rules at a short time scale:
request rates by method, status and color reach Prometheus; faults raise the alerts meant for them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import threading
import time
from pathlib import Path

import grpc
import pytest

from finmesh.cli.mesh import Mesh
from finmesh.cli.slice import SliceResult, bearer, run_slice
from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.slo.catalogue import TARGET_LABELS, series_labels
from finmesh.slo.rules import rules
from tests.prometheus import Prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "helm" / "finmesh" / "files" / "grafana" / "finmesh-overview.json"
COLOR = "blue"
# An hour of the real rules lasts 30 s here; windows shorter than four scrape intervals are floored at that
# (finmesh.slo.rules), so 5m becomes 4 s.
TIME_SCALE = 1 / 120


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    m = Mesh(
        tmp_path_factory.mktemp("mesh"),
        extra_env={
            "FINMESH_DEPLOYMENT_COLOR": COLOR,
            "FINMESH_SERVICE_VERSION": "9.9.9",
            "FINMESH_METRICS_SAMPLE_SECONDS": "1",  # gauges from databases keep up with 1 s scrapes
        },
    )
    m.start(timeout=60)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def prometheus(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory):
    jobs = {f"finmesh-{name}": [proc.metrics_target] for name, proc in mesh.processes.items()}
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), jobs, rules(TIME_SCALE))
    server.start()
    yield server
    server.stop()


def _pay(mesh: Mesh, times: int) -> None:
    for _ in range(times):
        asyncio.run(run_slice(mesh.targets(), mesh.fakes["sms"], top_up=10_000, pay=100))


def test_request_rates_by_method_status_and_color_reach_prometheus(mesh: Mesh, prometheus: Prometheus) -> None:
    _pay(mesh, 3)
    series = prometheus.wait(
        lambda: prometheus.query(
            "sum by (service_name, rpc_method, rpc_response_status_code, deployment_color, service_version) "
            '(increase(rpc_server_call_duration_seconds_count{service_name="payments"}[1m]))'
        ),
        30,
        "payments' server calls in Prometheus",
    )
    by_method = {(s["metric"]["rpc_method"], s["metric"]["rpc_response_status_code"]): s["metric"] for s in series}
    assert ("CreatePayment", "OK") in by_method, by_method
    assert by_method[("CreatePayment", "OK")]["deployment_color"] == COLOR
    assert by_method[("CreatePayment", "OK")]["service_version"] == "9.9.9"
    # payments called risk: its client side is recorded too, by callee.
    client = prometheus.query('sum by (rpc_service) (rpc_client_call_duration_seconds_count{service_name="payments"})')
    assert "finmesh.risk.v1.RiskService" in {s["metric"]["rpc_service"] for s in client}
    up = {s["metric"]["job"]: s["value"][1] for s in prometheus.query("up")}
    assert up == dict.fromkeys((f"finmesh-{n}" for n in mesh.processes), "1"), up


def test_every_catalogued_metric_is_exported_with_only_its_labels(mesh: Mesh, prometheus: Prometheus) -> None:
    """The catalogue the dashboard and rules are checked against (finmesh.slo.catalogue) is what the services
    really export: every series name is there after a payment, and no series carries a label it does not list
    (an id as a label would show up here)."""
    _pay(mesh, 1)
    catalogued = series_labels()
    deadline = time.monotonic() + 30  # gauges sampled from databases appear within a sampling interval
    while (missing := set(catalogued) - prometheus.metric_names()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing, f"catalogued but not exported: {sorted(missing)}"
    assert _metric_names_read_by_rules_and_dashboard() - {"target_info"} <= set(catalogued)
    exported = prometheus.api(
        "series", **{"match[]": '{__name__=~"finmesh_.+|rpc_.+|db_client_.+", job=~"finmesh-.+"}'}
    )
    for series in exported:
        name = series.pop("__name__")
        assert name in catalogued, f"exported but not catalogued: {name}"
        extra = set(series) - catalogued[name] - TARGET_LABELS
        assert not extra, f"{name} carries labels the catalogue does not list: {sorted(extra)}"


def _metric_names_read_by_rules_and_dashboard() -> set[str]:
    """Raw metric names in the rules' and the dashboard's expressions (recording rules' own names excluded)."""
    groups = rules()["groups"]
    expressions = [rule["expr"] for group in groups for rule in group["rules"]]
    if DASHBOARD.exists():
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        expressions += [t["expr"] for p in dashboard.get("panels", []) for t in p.get("targets", []) if "expr" in t]
    return set().union(*(_metric_names(expr) for expr in expressions))


# What in PromQL is not a metric name: label matchers and label lists, strings, grouping keywords, functions.
_LABELS = re.compile(r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\"[^\"]*\"")
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    bare = _LABELS.sub(" ", re.sub(r"\[[^\]]*\]", " ", expr))
    # Recording rules' names have colons: what they read is counted where they are defined.
    return {name for name in _NAME.findall(bare) if name.lower() not in _KEYWORDS and ":" not in name}


def test_notify_down_burns_identitys_budget_and_backs_up_the_outboxes(mesh: Mesh, prometheus: Prometheus) -> None:
    """Stop notify. Onboarding needs it (identity sends the SMS codes through it), so identity fails calls
    UNAVAILABLE and its fast-burn availability alert fires; payments keeps paying, its receipts wait in its
    outbox and the backlog alert fires; notify's own absence pages. Payments' budget is untouched."""
    demo = asyncio.run(run_slice(mesh.targets(), mesh.fakes["sms"], top_up=100_000, pay=100))
    notify = mesh.processes["notify"].process
    notify.terminate()
    notify.wait(15)
    stop = threading.Event()
    failures: list[BaseException] = []

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            try:
                asyncio.run(_pay_again(mesh, demo, n))
                with contextlib.suppress(grpc.aio.AioRpcError):
                    asyncio.run(run_slice(mesh.targets(), mesh.fakes["sms"], top_up=100, pay=1, wait_seconds=1))
            except BaseException as error:  # noqa: BLE001 - reported by the test, not lost in the thread
                failures.append(error)
                return
            n += 1
            time.sleep(0.2)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        for alert, labels in (
            ("FinmeshAvailabilityBudgetBurn", {"service_name": "identity", "long_window": "1h"}),
            ("FinmeshOutboxEventsStuck", {"service_name": "payments", "consumer": "notify"}),
            ("FinmeshMetricsAbsent", {"service_name": "notify"}),
        ):
            prometheus.wait(functools.partial(_firing, prometheus, alert, labels), 120, f"{alert} {labels} firing")
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    assert not _firing(prometheus, "FinmeshAvailabilityBudgetBurn", {"service_name": "payments"})


async def _pay_again(mesh: Mesh, demo: SliceResult, n: int) -> None:
    async with grpc.aio.insecure_channel(mesh.targets()["payments"]) as channel:
        paid = await pb_grpc.PaymentsServiceStub(channel).CreatePayment(
            pb.CreatePaymentRequest(
                idempotency_key=f"{demo.payment_id}-again-{n}",
                payer_account_id=demo.payer_account_id,
                payee_account_id=demo.payee_account_id,
                amount=money_pb2.Money(currency_code="CNY", minor_units=1),
                capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
            ),
            metadata=bearer(demo.tokens[demo.payer_user_id]),
            timeout=10,
        )
    # Captured, or held for review once risk's velocity rules notice the payer: either way an event.
    assert paid.payment.status in (pb.PAYMENT_STATUS_CAPTURED, pb.PAYMENT_STATUS_IN_REVIEW), paid


def _firing(prometheus: Prometheus, name: str, labels: dict[str, str]) -> bool:
    return any(
        alert["labels"].get("alertname") == name
        and alert["state"] == "firing"
        and all(alert["labels"].get(k) == v for k, v in labels.items())
        for alert in prometheus.alerts()
    )

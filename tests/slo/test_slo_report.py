"""`finmesh slo report` against a real Prometheus holding known data.

Three days of RPC histograms (15-minute samples, ending at END) are written as OpenMetrics text, backfilled
with `promtool tsdb create-blocks-from openmetrics` and served by a `prometheus` started on loopback; the report
is evaluated with --at END. Counters start at 0 and END is the last sample, so Prometheus' increase() needs no
extrapolation and every figure below is exact:
- payments: 1000 calls a step, of which `bad` UNAVAILABLE (the rest OK or INVALID_ARGUMENT, a caller's mistake
  that counts as good): 288 bad of 288,000, availability 99.9% over the window; the last 6 h fail 0.5% of calls
  (burn rate 10), the last hour 1% (burn rate 20). CreatePayment's 500 OK calls a step: 496 under 250 ms.
- risk: OK calls only and no fault series at all: 100%.
- notify: traffic on the first day only: figures over the window, "no traffic" for the burn windows.
- identity: no series: "no traffic" everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from finmesh.cli.mesh import free_port
from finmesh.platform.observability.metrics import LATENCY_BUCKETS
from finmesh.slo import report as r
from finmesh.slo.objectives import LatencyObjective
from finmesh.slo.report_cli import add_report_parser
from finmesh.slo.report_html import render
from tests.prometheus import backfilled

END = 1_736_121_600  # 2025-01-06T00:00:00Z: long past, so the backfilled blocks never meet Prometheus' head
STEP = 900
STEPS = 3 * 96
START = END - STEPS * STEP
METRIC = "rpc_server_call_duration_seconds"
BOUNDS = (*LATENCY_BUCKETS, float("inf"))


def payments_bad(step: int) -> int:
    """UNAVAILABLE calls in step `step` (0-based; each step ends at START + (step + 1) * STEP)."""
    if step >= STEPS - 4:  # the last hour
        return 10
    if step >= STEPS - 24:  # the rest of the last 6 hours
        return 4
    return 1 if step < 168 else 0  # 168 + 20*4 + 4*10 = 288


# Per step: calls by upper bucket bound (seconds); each a series of (service, method, status).
CREATE_OK = {0.01: 100, 0.05: 200, 0.25: 196, 0.5: 4}
GET_OK = {0.01: 490}
ASSESS_OK = {0.005: 500}
DELIVER_OK = {0.025: 100}


def _series() -> list[tuple[dict[str, str], object]]:
    """(labels, per-step {bound: calls} or a function of the step giving it)."""

    def labels(service: str, grpc_service: str, method: str, code: str) -> dict[str, str]:
        return {
            "service_name": service,
            "service_version": "1.0.0",
            "deployment_color": "blue",
            "rpc_system_name": "grpc",
            "rpc_service": grpc_service,
            "rpc_method": method,
            "rpc_response_status_code": code,
        }

    pay = "finmesh.payments.v1.PaymentService"
    return [
        (labels("payments", pay, "CreatePayment", "OK"), lambda s: CREATE_OK),
        (labels("payments", pay, "GetPayment", "OK"), lambda s: GET_OK),
        # Slow failures: they must count against availability and be left out of the latency figures.
        (labels("payments", pay, "CreatePayment", "UNAVAILABLE"), lambda s: {10.0: payments_bad(s)}),
        (labels("payments", pay, "CreatePayment", "INVALID_ARGUMENT"), lambda s: {0.005: 10 - payments_bad(s)}),
        (labels("risk", "finmesh.risk.v1.RiskService", "AssessPayment", "OK"), lambda s: ASSESS_OK),
        (
            labels("notify", "finmesh.notify.v1.NotifyService", "DeliverEvent", "OK"),
            lambda s: DELIVER_OK if s < 96 else None,  # None: the series ends after the first day
        ),
    ]


def openmetrics() -> str:
    lines = [f"# TYPE {METRIC} histogram"]
    for labels, per_step in _series():
        base = ",".join(f'{k}="{v}"' for k, v in labels.items())
        cumulative = dict.fromkeys(BOUNDS, 0)
        total_seconds = 0.0
        for sample in range(STEPS + 1):
            if sample > 0:
                calls = per_step(sample - 1)  # type: ignore[operator]
                if calls is None:
                    break
                for bound, n in calls.items():
                    for b in BOUNDS:
                        if b >= bound:
                            cumulative[b] += n
                    total_seconds += bound * n
            ts = START + sample * STEP
            for b in BOUNDS:
                le = "+Inf" if b == float("inf") else repr(b)
                lines.append(f'{METRIC}_bucket{{{base},le="{le}"}} {cumulative[b]} {ts}')
            lines.append(f"{METRIC}_count{{{base}}} {cumulative[float('inf')]} {ts}")
            lines.append(f"{METRIC}_sum{{{base}}} {total_seconds} {ts}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# --- a real Prometheus ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backfilled(tmp_path_factory.mktemp("prometheus"), openmetrics()) as url:
        yield url


@pytest.fixture(scope="module")
def report(prometheus: str) -> r.Report:
    return asyncio.run(r.collect(prometheus, "28d", at=END))


def _service(report: r.Report, name: str) -> r.ServiceReport:
    return next(s for s in report.services if s.availability.service == name)


def _class(report: r.Report, name: str) -> r.LatencyFigures:
    return next(c for s in report.services for c in s.latency if c.name == name)


# --- the figures --------------------------------------------------------------------------------------------------


def test_availability_budget_and_burn_rates_from_the_raw_counters(report: r.Report) -> None:
    payments = _service(report, "payments").availability
    assert payments.window == r.Counts(total=288_000, bad=288)
    assert payments.ratio == pytest.approx(0.999, abs=1e-12)
    # 0.1% failed against 0.05% allowed: the budget is spent twice over.
    assert payments.budget_left == pytest.approx(-1.0, abs=1e-9)
    assert payments.burn_rate("6h") == pytest.approx(10.0, rel=1e-9)
    assert payments.burn_rate("1h") == pytest.approx(20.0, rel=1e-9)

    risk = _service(report, "risk").availability
    assert risk.window == r.Counts(total=144_000, bad=0)
    assert (risk.ratio, risk.budget_left, risk.burn_rate("1h")) == (1.0, 1.0, 0.0)


def test_a_service_without_calls_has_no_figures_not_100_percent(report: r.Report) -> None:
    identity = _service(report, "identity")
    assert identity.availability.ratio is None and identity.availability.budget_left is None
    assert all(c.ratio is None and c.percentiles[0.99] is None for c in identity.latency)
    notify = _service(report, "notify").availability
    # 9,600 calls; increase() extrapolates half a sample interval past a series' last sample (50 calls).
    assert notify.window.total == 9_650 and notify.ratio == 1.0
    assert notify.burn_rate("1h") is None and notify.burn_rate("6h") is None


def test_latency_classes_count_successful_calls_under_the_threshold(report: r.Report) -> None:
    create = _class(report, "payments-create")
    # The UNAVAILABLE calls took 10 s and the INVALID_ARGUMENT ones 5 ms: neither is in these counts.
    assert create.window == r.Counts(total=500 * STEPS, bad=4 * STEPS)
    assert create.ratio == pytest.approx(0.992)
    assert create.budget_left == pytest.approx(0.2)  # 0.8% slow of 1% allowed
    assert create.burn_rate("1h") == pytest.approx(0.8)
    # histogram_quantile interpolates inside the bucket holding the rank: 100 in (5, 10] ms, 200 in (25, 50] ms,
    # 196 in (100, 250] ms.
    assert create.percentiles[0.5] == pytest.approx(0.025 + 0.025 * 150 / 200)
    assert create.percentiles[0.95] == pytest.approx(0.1 + 0.15 * 175 / 196)
    assert create.percentiles[0.99] == pytest.approx(0.1 + 0.15 * 195 / 196)

    read = _class(report, "payments-read")
    assert read.window == r.Counts(total=490 * STEPS, bad=0)
    assert read.percentiles[0.99] == pytest.approx(0.005 + 0.005 * 0.99)
    assert _class(report, "risk-assess").ratio == 1.0


def test_the_chart_has_the_error_ratio_of_each_day(report: r.Report) -> None:
    assert report.step_seconds == 86_400
    payments = [(t, ratio) for t, ratio in _service(report, "payments").error_ratio if ratio is not None]
    # Day 1: 96 bad of 96,000; day 2: 72; day 3: 120 (the bad last 6 hours).
    assert payments == [
        (END - 2 * 86_400, pytest.approx(0.001)),
        (END - 86_400, pytest.approx(0.00075)),
        (END, pytest.approx(0.00125)),
    ]
    assert [ratio for _, ratio in _service(report, "risk").error_ratio if ratio is not None] == [0.0, 0.0, 0.0]


def test_the_command_prints_the_table_and_writes_a_page_with_a_chart_per_service(
    prometheus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "slo.html"
    code = _run(["--prometheus", prometheus, "--window", "28d", "--at", "2025-01-06T00:00:00Z", "--html", str(page)])
    out = capsys.readouterr().out
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["payments"].split()[1:4] == ["99.900%", "99.950%", "-100.0%"]
    assert "20.00×" in lines["payments"] and "10.00×" in lines["payments"]
    assert "no traffic" in lines["identity"]
    assert lines["payments-create"].split()[-6:] == ["43.75", "ms", "233.9", "ms", "249.2", "ms"]
    body = page.read_text(encoding="utf-8")
    assert body.count("<svg") == 4
    # A dot per day with calls (payments, risk: 3; notify: 1), in the error ratio's colour.
    assert body.count('r="2.5" fill="#d62728"/>') == 3 + 3 + 1
    for service in ("identity", "payments", "risk", "notify"):
        assert f'<h2 id="{service}">{service}</h2>\n<svg' in body
    assert "<script" not in body and "src=" not in body and "<link" not in body  # self-contained


def test_a_shorter_window_counts_only_its_own_calls(prometheus: str) -> None:
    day = asyncio.run(r.collect(prometheus, "1d", at=END))
    payments = _service(day, "payments").availability
    assert payments.window == r.Counts(total=96_000, bad=120)
    assert _service(day, "notify").availability.ratio is None


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    return int(args.func(args))


def test_unreachable_prometheus_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--prometheus", f"http://127.0.0.1:{free_port()}", "--at", str(END)]) == 2
    assert "unreachable" in capsys.readouterr().err


def test_an_error_answer_is_exit_2(prometheus: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Not Prometheus' API at this path: a 404, as from a wrong base URL.
    assert _run(["--prometheus", prometheus + "/not-the-api", "--at", str(END)]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_a_threshold_that_is_no_bucket_bound_is_a_clear_error(prometheus: str) -> None:
    odd = LatencyObjective("payments-odd", "payments", "CreatePayment", 0.3, 0.99)
    with pytest.raises(r.PrometheusError, match=r"payments-odd: no bucket bound at 0.3 s"):
        asyncio.run(r.collect(prometheus, "1d", at=END, availability=(), latency=(odd,)))


def test_a_query_prometheus_rejects_raises(prometheus: str) -> None:
    async def bad_query() -> None:
        prom = r.Prometheus(prometheus)
        try:
            await prom.instant("sum(", END)
        finally:
            await prom.close()

    with pytest.raises(r.PrometheusError, match="HTTP 400"):
        asyncio.run(bad_query())


# --- the arithmetic ----------------------------------------------------------------------------------------------


def test_the_pure_figures() -> None:
    assert r.parse_duration("28d") == 28 * 86_400 and r.parse_duration("1h30m") == 5_400
    with pytest.raises(ValueError):
        r.parse_duration("28 days")
    assert r.budget_left(r.Counts(1000, 0), 0.999) == 1.0
    assert r.budget_left(r.Counts(1000, 3), 0.999) == pytest.approx(-2.0)
    assert r.burn_rate(r.Counts(0, 0), 0.999) is None
    assert r.counts_from_buckets({0.1: 7, 0.25: 9, float("inf"): 10}, 0.25) == r.Counts(10, 1)
    with pytest.raises(ValueError):
        r.counts_from_buckets({0.1: 7, float("inf"): 10}, 0.2)
    assert r.ratio_series([(1, 10), (2, 0)], [(1, 1)]) == [(1, 0.1), (2, None)]
    html = render(r.Report("http://p", "1d", END, 3_600, [r.ServiceReport(_service_without_data(), [], [])]))
    assert "no data" in html and "no traffic" in html


def _service_without_data() -> r.Figures:
    none = r.Counts(0, 0)
    return r.Figures("x-availability", "x", 0.999, none, {w: none for w in r.BURN_WINDOWS})

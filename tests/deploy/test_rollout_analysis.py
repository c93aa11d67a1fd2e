"""Rollout analysis from metrics and the promotion gates, against a real Prometheus, real buf and real git.

The pure rules (`judge`) and the loop (`run_analysis`) are tested alone; then `PrometheusAnalyzer` and the
ledger gate read a real Prometheus holding known series: 30 minutes of payments' RPC histograms per color
(15 s samples ending at END), backfilled with `promtool tsdb create-blocks-from openmetrics`. The analyzer's
clock is set to END, so every figure is known exactly and no test waits for a scrape:
- blue (stable): 10 calls/s, all OK, in the (25 ms, 50 ms] bucket: p99 49.75 ms.
- good: 5 calls/s like blue.  faulty: 5 calls/s, 20% UNAVAILABLE.  slow: 5 calls/s, all in (0.5 s, 1 s].
- idle: health checks only (which the queries leave out).
Ledger gauges: good and blue balanced and checked every sample; faulty 2 unbalanced currencies; slow's check
stopped 30 minutes before END; idle none.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from finmesh.cli.mesh import free_port
from finmesh.platform.observability.metrics import LATENCY_BUCKETS
from finmesh.platform.storage.migrations import script_directory
from finmesh.rollout import gates
from finmesh.rollout.analysis import ColorValues, PrometheusAnalyzer, judge, run_analysis
from finmesh.rollout.model import AnalysisResult, Thresholds
from finmesh.rollout.prometheus import MAX_ERROR_CHARS, PrometheusClient, PrometheusError
from tests.migrations.expand_policy import released_commit
from tests.migrations.support import require_history
from tests.prometheus import backfilled

REPO = Path(__file__).resolve().parents[2]
END = 1_736_121_600  # 2025-01-06T00:00:00Z: long past, so the backfilled blocks never meet Prometheus' head
STEP = 15
STEPS = 120  # 30 minutes
START = END - STEPS * STEP
METRIC = "rpc_server_call_duration_seconds"
BOUNDS = (*LATENCY_BUCKETS, float("inf"))
T = Thresholds()  # the chart's defaults: window 1m, every 10 s, failure_limit 0, inconclusive_limit 3

# Per color: per 15 s step, calls by (status, upper bucket bound).
TRAFFIC: dict[str, dict[tuple[str, float], int]] = {
    "blue": {("OK", 0.05): 150},
    "good": {("OK", 0.05): 75},
    "faulty": {("OK", 0.05): 60, ("UNAVAILABLE", 0.05): 15},
    "slow": {("OK", 1.0): 75},
}
# color -> (unbalanced currencies, seconds between END and its last check, or None: it checks every sample)
LEDGER: dict[str, tuple[int, int | None]] = {
    "blue": (0, None),
    "good": (0, None),
    "faulty": (2, None),
    "slow": (0, 1800),
}


# --- the data and the Prometheus --------------------------------------------------------------------------------


def _histogram(lines: list[str], labels: dict[str, str], per_step: dict[float, int]) -> None:
    base = ",".join(f'{k}="{v}"' for k, v in labels.items())
    cumulative = dict.fromkeys(BOUNDS, 0)
    total = 0.0
    for sample in range(STEPS + 1):
        if sample > 0:
            for bound, n in per_step.items():
                for b in BOUNDS:
                    if b >= bound:
                        cumulative[b] += n
                total += bound * n
        ts = START + sample * STEP
        for b in BOUNDS:
            le = "+Inf" if b == float("inf") else repr(b)
            lines.append(f'{METRIC}_bucket{{{base},le="{le}"}} {cumulative[b]} {ts}')
        lines.append(f"{METRIC}_count{{{base}}} {cumulative[float('inf')]} {ts}")
        lines.append(f"{METRIC}_sum{{{base}}} {total} {ts}")


def openmetrics() -> str:
    def labels(color: str, service: str, method: str, code: str, version: str = "2") -> dict[str, str]:
        return {
            "service_name": "payments",
            "service_version": version,
            "deployment_color": color,
            "rpc_service": service,
            "rpc_method": method,
            "rpc_response_status_code": code,
        }

    lines = [f"# TYPE {METRIC} histogram"]
    # "reused": a color whose window still holds the calls of the faulty version it ran before ("1").
    runs = [(color, "1" if color == "blue" else "2", calls) for color, calls in TRAFFIC.items()]
    runs += [("reused", "1", TRAFFIC["faulty"]), ("reused", "2", TRAFFIC["good"])]
    for color, version, calls in runs:
        for code in sorted({c for c, _ in calls}):
            per_step = {bound: n for (c, bound), n in calls.items() if c == code}
            series = labels(color, "finmesh.payments.v1.PaymentService", "CreatePayment", code, version)
            _histogram(lines, series, per_step)
    # Probes reach the idle color: health calls are not traffic to judge by.
    _histogram(lines, labels("idle", "grpc.health.v1.Health", "Check", "OK"), {0.001: 30})
    for gauge in ("finmesh_ledger_invariant_violations", "finmesh_ledger_invariant_last_check_timestamp_seconds"):
        lines.append(f"# TYPE {gauge} gauge")
        for color, (violations, stopped) in LEDGER.items():
            for sample in range(STEPS + 1):
                ts = START + sample * STEP
                checked = min(ts - 5, END - stopped) if stopped else ts - 5
                value = violations if gauge.endswith("violations") else checked
                lines.append(f'{gauge}{{service_name="payments",deployment_color="{color}"}} {value} {ts}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backfilled(tmp_path_factory.mktemp("prometheus"), openmetrics()) as url:
        yield url


class FakeTime:
    """The analyzer's wall clock, starting at `start`; sleeping moves it on at once."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def analyse(url: str, candidate: str, *, seconds: float = 60, thresholds: Thresholds = T) -> AnalysisResult:
    """Analysis of payments/<candidate> against blue over the minute ending at END."""
    fake, lines = FakeTime(END - seconds), []
    analyzer = PrometheusAnalyzer(url, thresholds, clock=fake.clock, sleep=fake.sleep, log=lines.append)
    result = analyzer.analyse("payments", candidate, "blue", seconds)
    assert fake.now <= END + 1e-6, "measured past the window"
    return result


# --- the rules, pure --------------------------------------------------------------------------------------------


def _judge(candidate: ColorValues, stable: ColorValues | None = None, t: Thresholds = T) -> AnalysisResult:
    return judge("payments", candidate, stable or ColorValues("blue", 10.0, 0.0, 0.1), t)


def _phases(result: AnalysisResult) -> dict[str, str]:
    return {m.metric: m.phase for m in result.measurements}


def test_no_data_is_inconclusive_never_successful() -> None:
    """A candidate without calls (no series, or NaN from 0/0 and histogram_quantile) is not judged healthy."""
    for nothing in (ColorValues("green"), ColorValues("green", 0.0, float("nan"), float("nan"))):
        result = _judge(nothing)
        assert result.phase == "Inconclusive", result
        assert "call_rate of payments/green" in result.message and "< min 0.2/s" in result.message


def test_too_few_calls_are_not_judged_even_when_they_fail() -> None:
    """Under min_call_rate a share of a few calls is noise: Inconclusive, neither Failed nor Successful."""
    result = _judge(ColorValues("green", 0.1, 1.0, 5.0))
    assert result.phase == "Inconclusive"
    assert _phases(result) == {"call_rate": "Inconclusive", "error_rate": "Inconclusive", "latency_p99": "Inconclusive"}


def test_nan_quantile_is_no_data() -> None:
    """histogram_quantile's NaN (no bucket moved) is recorded as no data, not compared."""
    result = _judge(ColorValues("green", 5.0, 0.0, float("nan")))
    assert result.phase == "Inconclusive" and _phases(result)["latency_p99"] == "Inconclusive"
    assert result.measurements[2].candidate is None


def test_error_rate_limit_and_the_stable_allowance() -> None:
    """Errors up to max_error_rate pass; above it fail, unless the stable color shows them too (+ increase)."""
    quiet = ColorValues("blue", 10.0, 0.0, 0.1)
    assert _judge(ColorValues("green", 5.0, 0.010, 0.1), quiet).phase == "Successful"
    failed = _judge(ColorValues("green", 5.0, 0.183, 0.1), quiet)
    assert failed.phase == "Failed"
    assert failed.message.startswith("error_rate of payments/green 0.183 > limit 0.010 (stable blue 0.000) over 1m")
    assert "query: (sum(rate(rpc_server_call_duration_seconds_count{" in failed.message
    noisy = ColorValues("blue", 10.0, 0.05, 0.1)  # a dependency down: both colors fail 5%
    assert _judge(ColorValues("green", 5.0, 0.054, 0.1), noisy).phase == "Successful"
    worse = _judge(ColorValues("green", 5.0, 0.056, 0.1), noisy)
    assert worse.phase == "Failed" and "> limit 0.055 (stable blue 0.050)" in worse.message


def test_stable_without_data() -> None:
    """No stable figures: the error rate is held to max_error_rate alone; latency has nothing to compare with."""
    nothing = ColorValues("blue")
    assert _judge(ColorValues("green", 5.0, 0.02, 0.1), nothing).phase == "Failed"
    result = _judge(ColorValues("green", 5.0, 0.0, 0.1), nothing)
    assert result.phase == "Inconclusive"
    assert "no stable blue p99 to compare with" in result.message


def test_latency_ratio_plus_slack() -> None:
    """p99 <= stable p99 * 1.5 + 25 ms; a p99 past the top bucket (+Inf) fails."""
    stable = ColorValues("blue", 10.0, 0.0, 0.1)  # limit 0.175 s
    assert _judge(ColorValues("green", 5.0, 0.0, 0.174), stable).phase == "Successful"
    slow = _judge(ColorValues("green", 5.0, 0.0, 0.176), stable)
    assert slow.phase == "Failed"
    assert "latency_p99 of payments/green 0.176s > limit 0.175s (stable blue 0.100s x 1.5 + 0.025s)" in slow.message
    assert _judge(ColorValues("green", 5.0, 0.0, float("inf")), stable).phase == "Failed"


# --- the loop ---------------------------------------------------------------------------------------------------


def _scripted(phases: str) -> tuple[Callable[[float], AnalysisResult], list[float]]:
    """measure() answering S(uccessful), F(ailed), I(nconclusive) in turn, recording when it was called."""
    names = {"S": "Successful", "F": "Failed", "I": "Inconclusive"}
    calls: list[float] = []

    def measure(at: float) -> AnalysisResult:
        calls.append(at)
        return AnalysisResult(names[phases[len(calls) - 1]], f"measurement {len(calls)}")  # type: ignore[arg-type]

    return measure, calls


def _loop(
    phases: str, seconds: float = 60, stop: Callable[[], bool] = lambda: False, **limits: int
) -> tuple[AnalysisResult, list[float]]:
    fake = FakeTime(1000.0)
    measure, calls = _scripted(phases)
    t = Thresholds(**limits)  # type: ignore[arg-type]
    result = run_analysis(measure, t, seconds, what="payments/green", clock=fake.clock, sleep=fake.sleep, stop=stop)
    return result, calls


def test_measures_every_interval_and_at_least_once() -> None:
    """60 s at 10 s: six measurements, at the end of each interval; 0 s: one, right away."""
    result, calls = _loop("SSSSSS")
    assert result.phase == "Successful" and calls == [1010.0, 1020.0, 1030.0, 1040.0, 1050.0, 1060.0]
    result, calls = _loop("S", seconds=0)
    assert result.phase == "Successful" and calls == [1000.0]


def test_consecutive_failures_beyond_the_limit_fail() -> None:
    """failure_limit 0: the first failure fails; 1: one is tolerated, two in a row fail, a success resets."""
    result, calls = _loop("FSSSSS")
    assert result.phase == "Failed" and len(calls) == 1 and "failure_limit 0" in result.message
    result, _ = _loop("FSFSFS", failure_limit=1)
    assert result.phase == "Successful"
    result, calls = _loop("SFIF", failure_limit=1)  # a measurement that says nothing forgives nothing
    assert result.phase == "Failed" and len(calls) == 4


def test_window_ending_on_a_tolerated_failure_is_inconclusive() -> None:
    """A failure still within failure_limit at the end is no success."""
    result, _ = _loop("SSSSSF", failure_limit=1)
    assert result.phase == "Inconclusive" and "ended on 1 failed measurement(s)" in result.message


def test_inconclusive_limit() -> None:
    """More than inconclusive_limit measurements in a row without evidence end the analysis Inconclusive."""
    result, calls = _loop("IIIIII")
    assert result.phase == "Inconclusive" and len(calls) == 4 and "inconclusive_limit 3" in result.message
    result, _ = _loop("IIISSS")
    assert result.phase == "Successful"


def test_stop_ends_the_analysis_early() -> None:
    """stop() (an operator's promote or abort) is looked at while waiting; nothing measured is Inconclusive."""
    result, calls = _loop("SSSSSS", stop=lambda: True)
    assert result.phase == "Inconclusive" and calls == []
    seen: list[int] = []
    result, calls = _loop("SSSSSS", stop=lambda: len(seen) > 25 or seen.append(0) is not None)
    assert result.phase == "Successful" and 1 <= len(calls) < 6 and "stopped after" in result.message


# --- against a real Prometheus ----------------------------------------------------------------------------------


def test_a_good_candidate_is_successful(prometheus: str) -> None:
    result = analyse(prometheus, "good")
    assert result.phase == "Successful", result.message
    values = {m.metric: (m.candidate, m.stable) for m in result.measurements}
    assert values["call_rate"] == (pytest.approx(5.0), pytest.approx(10.0))
    assert values["error_rate"] == (0.0, 0.0)
    assert values["latency_p99"] == (pytest.approx(0.04975), pytest.approx(0.04975))


def test_a_candidate_failing_a_fifth_of_its_calls_fails_on_error_rate(prometheus: str) -> None:
    result = analyse(prometheus, "faulty")
    assert result.phase == "Failed"
    assert result.message.startswith("error_rate of payments/faulty 0.200 > limit 0.010 (stable blue 0.000) over 1m")
    assert 'deployment_color="faulty"' in result.message  # the query, as sent


def test_a_reused_color_is_judged_by_the_calls_of_the_version_it_runs_now(prometheus: str) -> None:
    """Told the versions, the analysis reads only version 2's calls on the color the faulty version 1 left."""
    fake = FakeTime(END - 60)
    analyzer = PrometheusAnalyzer(prometheus, T, clock=fake.clock, sleep=fake.sleep)
    result = analyzer.analyse("payments", "reused", "blue", 60, versions=("2", "1"))
    assert result.phase == "Successful", result.message
    assert 'service_version="2"' in {m.metric: m.query for m in result.measurements}["error_rate"]
    fake = FakeTime(END - 60)
    blind = PrometheusAnalyzer(prometheus, T, clock=fake.clock, sleep=fake.sleep)
    assert blind.analyse("payments", "reused", "blue", 60).phase == "Failed"  # both versions' calls summed


def test_a_slow_candidate_fails_on_latency_p99(prometheus: str) -> None:
    result = analyse(prometheus, "slow")
    assert result.phase == "Failed"
    assert "latency_p99 of payments/slow 0.995s > limit 0.100s (stable blue 0.050s x 1.5 + 0.025s)" in result.message


def test_a_candidate_without_traffic_is_inconclusive(prometheus: str) -> None:
    """Its health checks are not traffic."""
    result = analyse(prometheus, "idle")
    assert result.phase == "Inconclusive"
    assert "call_rate of payments/idle no calls < min 0.2/s" in result.message


def test_prometheus_down_is_an_error() -> None:
    result = analyse(f"http://127.0.0.1:{free_port()}", "good")
    assert result.phase == "Error"
    assert "analysis of payments/good could not measure: Prometheus at http://127.0.0.1:" in result.message
    assert "is unreachable" in result.message


def test_a_refused_query_names_prometheus_error_bounded(prometheus: str) -> None:
    """Prometheus' own error text (a parse error here) is in the exception, cut to a bound."""
    # Prometheus echoes the unknown name whole.
    with pytest.raises(PrometheusError, match=r"HTTP 400 \(bad_data\): .*unknown function") as caught:
        PrometheusClient(prometheus).query("no_such_function_" + "x" * 5000 + "(up)")
    assert len(str(caught.value)) < MAX_ERROR_CHARS + 100


# --- gates: contracts (real buf) --------------------------------------------------------------------------------


def _protos(into: Path) -> Path:
    shutil.copytree(REPO / "protos", into / "protos")
    shutil.copy(REPO / "buf.yaml", into / "buf.yaml")
    return into


def _edit(tree: Path, service: str, old: str, new: str) -> None:
    proto = tree / f"protos/finmesh/{service}/v1/{service}_service.proto"
    text = proto.read_text()
    assert old in text
    proto.write_text(text.replace(old, new, 1))


@pytest.fixture
def trees(tmp_path: Path) -> gates.Versions:
    return gates.Versions(stable=_protos(tmp_path / "stable"), candidate=_protos(tmp_path / "candidate"))


def test_contracts_gate_passes_a_compatible_change(trees: gates.Versions) -> None:
    _edit(trees.candidate, "payments", "message Account {\n", "message Account {\n  string nickname = 90;\n")
    result = gates.contracts_gate("payments", trees)
    assert result.passed, result.reason


def test_contracts_gate_refuses_a_removed_field(trees: gates.Versions) -> None:
    _edit(
        trees.candidate,
        "payments",
        "  // Pseudonymous user id of the owner; empty for platform accounts.\n  string owner_id = 2;\n",
        "  reserved 2;\n",
    )
    result = gates.contracts_gate("payments", trees)
    assert not result.passed
    assert "payments_service.proto" in result.reason and 'field "2" with name "owner_id"' in result.reason
    # Another service's rollout is not refused for it.
    assert gates.contracts_gate("risk", trees).passed


def test_contracts_gate_fails_when_buf_cannot_compare(trees: gates.Versions) -> None:
    """A candidate tree buf cannot even compile is no evidence of compatibility."""
    _edit(trees.candidate, "payments", "message Account {\n", "message Account {\n  this is not proto\n")
    result = gates.contracts_gate("payments", trees)
    assert not result.passed and result.reason.startswith("not checked: buf cannot compile the protos: "), result.reason
    missing = gates.contracts_gate("payments", gates.Versions(trees.stable / "nowhere", trees.stable))
    assert not missing.passed and missing.reason.startswith("not checked: buf breaking failed:"), missing.reason


# --- gates: migrations ------------------------------------------------------------------------------------------


def _migrations_tree(into: Path, extra: str | None = None, header: str = "") -> Path:
    versions = into / "services/payments/finmesh/payments/migrations/versions"
    shutil.copytree(Path(script_directory("payments").versions), versions, ignore=shutil.ignore_patterns("__pycache__"))
    if extra is not None:
        head = script_directory("payments").get_current_head()
        (versions / "payments_9000_candidate.py").write_text(
            "import sqlalchemy as sa\nfrom alembic import op\n\n"
            f"revision = 'payments_9000'\ndown_revision = {head!r}\n{header}\n\n"
            "def upgrade() -> None:\n" + textwrap.indent(extra, "    ") + "\n"
        )
    return into


def test_migrations_gate_expand_passes_contract_is_refused(tmp_path: Path) -> None:
    stable = _migrations_tree(tmp_path / "stable")
    expand = _migrations_tree(tmp_path / "expand", "op.add_column('payments', sa.Column('note', sa.String(100)))")
    drop = _migrations_tree(tmp_path / "drop", "op.drop_column('payments', 'review_note')")
    assert (
        gates.migrations_gate("payments", gates.Versions(stable, stable)).reason
        == "no new revision of the payments schema"
    )
    passed = gates.migrations_gate("payments", gates.Versions(stable, expand))
    assert passed.passed and passed.reason == "payments_9000 only expand"
    refused = gates.migrations_gate("payments", gates.Versions(stable, drop))
    assert not refused.passed and "payments_9000: drop_column" in refused.reason


def test_migrations_gate_takes_a_contract_step_the_stable_version_allows(tmp_path: Path) -> None:
    """Marked with a release at or before the stable version's commit: the running code no longer reads it."""
    released = released_commit()
    require_history(REPO, released)
    stable = _migrations_tree(tmp_path / "stable")
    marked = _migrations_tree(
        tmp_path / "marked", "op.drop_column('payments', 'review_note')", f"CONTRACT_AFTER_RELEASE = {released!r}"
    )
    assert gates.migrations_gate("payments", gates.Versions(stable, marked, REPO, released)).passed
    first = subprocess.run(
        ["git", "-C", str(REPO), "rev-list", "--max-parents=0", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    early = gates.migrations_gate("payments", gates.Versions(stable, marked, REPO, first))
    assert not early.passed and "is not a release at or before the stable version" in early.reason


# --- gates: ledger, and all of them -----------------------------------------------------------------------------


def test_ledger_gate(prometheus: str) -> None:
    client = PrometheusClient(prometheus)
    good = gates.ledger_gate("payments", "good", client, at=END)
    assert good.passed and good.reason == "payments/good: books balanced in every currency, checked 5 s ago"
    faulty = gates.ledger_gate("payments", "faulty", client, at=END)
    assert not faulty.passed and "found 2 unbalanced currencies" in faulty.reason
    stale = gates.ledger_gate("payments", "slow", client, at=END)
    assert not stale.passed and "ran 1800 s ago (> 900 s)" in stale.reason
    never = gates.ledger_gate("payments", "idle", client, at=END)
    assert not never.passed and "has reported no ledger check" in never.reason
    assert gates.ledger_gate("risk", "green", client, at=END).reason == "not applicable: risk keeps no ledger"
    down = gates.ledger_gate("payments", "good", PrometheusClient(f"http://127.0.0.1:{free_port()}"), at=END)
    assert not down.passed and "unreachable" in down.reason


def test_check_gates_from_git_refs(prometheus: str) -> None:
    """Two refs of this repository (here both HEAD) extracted with git archive: every gate passes; without
    source trees the source gates fail, unless skipped."""
    with gates.versions_from_git(REPO, "HEAD", "HEAD") as versions:
        assert (versions.candidate / "protos/finmesh/payments/v1/payments_service.proto").exists()
        results = gates.check_gates("payments", "good", versions=versions, prometheus_url=prometheus, at=END)
    assert [(r.gate, r.passed) for r in results] == [("contracts", True), ("migrations", True), ("ledger", True)]
    bare = gates.check_gates(
        "payments", "faulty", versions=None, prometheus_url=prometheus, at=END, skip=("contracts",)
    )
    assert [(r.gate, r.passed) for r in bare] == [("contracts", True), ("migrations", False), ("ledger", False)]
    assert bare[0].reason == "skipped by the operator"
    assert bare[1].reason == "not checked: no source trees of the two versions given"
    with pytest.raises(ValueError, match="no such gate: nope"):
        gates.check_gates("payments", "good", versions=None, prometheus_url=None, skip=("nope",))

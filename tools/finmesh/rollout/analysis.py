"""Analysis from metrics: the candidate color judged against the stable color, from Prometheus, by the thresholds.

Three parts, so the rules can be tested without a Prometheus and the loop without a clock:
- `judge`: pure. One measurement's figures for both colors (`ColorValues`) -> one `AnalysisResult` whose
  measurements say, per metric, what was queried, both values, the limit and the verdict.
- `run_analysis`: the loop. Measures every `interval_seconds` until `seconds` have passed (at least once),
  counts consecutive Failed and Inconclusive measurements against `failure_limit` and `inconclusive_limit`,
  and gives the verdict. The clock, the sleep and the measurement are passed in.
- `PrometheusAnalyzer`: `model.Analyzer` over both, measuring with the queries of `queries.py`.

What the phases mean (and what a controller does with them):
- Successful: the last measurement passed every rule with enough traffic. The only phase that lets a
  rollout go on.
- Failed: more than `failure_limit` consecutive measurements failed a rule: abort, traffic back on stable.
- Inconclusive: nothing says the candidate is bad, nothing says it is good: more than `inconclusive_limit`
  consecutive measurements without enough calls or without data, or the window ended on failures still within
  `failure_limit`. Never promoted: the controller pauses for an operator (Argo does the same).
- Error: Prometheus could not be asked (down, refused the query): the candidate was not judged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from finmesh.rollout import queries
from finmesh.rollout.model import AnalysisPhase, AnalysisResult, Measurement, Thresholds
from finmesh.rollout.prometheus import DEFAULT_TIMEOUT_SECONDS, PrometheusClient, PrometheusError

QUANTILE = 0.99
METRICS = ("call_rate", "error_rate", "latency_p99")
# stop() is looked at this often while waiting between measurements.
STOP_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ColorValues:
    """One color's figures over the window; None where Prometheus returned no data."""

    color: str
    call_rate: float | None = None  # calls/s
    error_rate: float | None = None  # share of calls failed by the server, 0..1
    latency_p99: float | None = None  # seconds


def color_queries(service: str, color: str, window: str, version: str = "") -> dict[str, str]:
    """The PromQL of each metric for one color (queries.py: the same strings Argo's templates hold)."""
    s = queries.Selector(service, color, window, version)
    return {
        "call_rate": queries.call_rate(s),
        "error_rate": queries.error_rate(s),
        "latency_p99": queries.latency_quantile(s, QUANTILE),
    }


# --- the rules (pure) ------------------------------------------------------------------------------------------


def _real(value: float | None) -> float | None:
    """NaN (0/0: an error rate or a quantile without calls) is no data; ±Inf stays (a quantile past the top
    bucket is a real, if coarse, answer)."""
    return None if value is None or math.isnan(value) else value


def _share(value: float | None) -> str:
    return "no data" if value is None else f"{value:.3f}"


def _secs(value: float | None) -> str:
    if value is None:
        return "no data"
    return "+Inf s (past the top bucket)" if math.isinf(value) else f"{value:.3f}s"


def _rate(value: float | None) -> str:
    return "no calls" if value is None else f"{value:.2f}/s"


def _cmp(value: float | None, limit: float | None) -> str:
    return ">" if value is not None and limit is not None and value > limit else "<="


def _verdict(value: float | None, limit: float | None, enough: bool) -> AnalysisPhase:
    if value is None or limit is None or not enough:
        return "Inconclusive"
    return "Failed" if value > limit else "Successful"


def judge(
    service: str,
    candidate: ColorValues,
    stable: ColorValues,
    thresholds: Thresholds,
    queries_by_metric: Mapping[str, str] | None = None,
) -> AnalysisResult:
    """One measurement's verdict: Failed if a rule fails (with enough calls to judge), else Inconclusive if the
    candidate served too few calls or a figure has no data, else Successful. The message names the metric,
    both colors' values and the limit; `queries_by_metric` (default: the candidate's queries) are recorded."""
    t = thresholds
    asked = dict(queries_by_metric or color_queries(service, candidate.color, t.window))
    who = f"{service}/{candidate.color}"
    ref = f"stable {stable.color}"
    over = f"over {t.window}"

    rate = _real(candidate.call_rate)
    enough = rate is not None and rate >= t.min_call_rate
    traffic = Measurement(
        "call_rate",
        asked["call_rate"],
        rate,
        _real(stable.call_rate),
        t.min_call_rate,
        "Successful" if enough else "Inconclusive",
        f"call_rate of {who} {_rate(rate)} "
        + (">=" if enough else "<")
        + f" min {t.min_call_rate:g}/s ({ref} {_rate(_real(stable.call_rate))}) {over}",
    )
    # Below min_call_rate a share of a handful of calls is noise: not a reason to fail nor to pass.
    not_judged = "" if enough else ": not judged, too few calls"

    errors, stable_errors = _real(candidate.error_rate), _real(stable.error_rate)
    # A fault the stable color shows too (a dependency down) is not the candidate's: allowed on top of it.
    error_limit = t.max_error_rate
    if stable_errors is not None:
        error_limit = max(t.max_error_rate, stable_errors + t.max_error_rate_increase)
    error_phase = _verdict(errors, error_limit, enough)
    error = Measurement(
        "error_rate",
        asked["error_rate"],
        errors,
        stable_errors,
        error_limit,
        error_phase,
        f"error_rate of {who} {_share(errors)} {_cmp(errors, error_limit)} limit {error_limit:.3f} "
        f"({ref} {_share(stable_errors)}) {over}{not_judged if errors is not None else ': no calls'}",
    )

    p99, stable_p99 = _real(candidate.latency_p99), _real(stable.latency_p99)
    latency_limit = None if stable_p99 is None else stable_p99 * t.max_latency_p99_ratio + t.latency_slack_seconds
    latency_phase = _verdict(p99, latency_limit, enough)
    if p99 is None:
        why = ": no calls"
    elif latency_limit is None:
        why = f": no {ref} p99 to compare with"
    else:
        why = not_judged
    latency = Measurement(
        "latency_p99",
        asked["latency_p99"],
        p99,
        stable_p99,
        latency_limit,
        latency_phase,
        f"latency_p99 of {who} {_secs(p99)} {_cmp(p99, latency_limit)} limit {_secs(latency_limit)} "
        f"({ref} {_secs(stable_p99)} x {t.max_latency_p99_ratio:g} + {t.latency_slack_seconds:g}s) {over}{why}",
    )

    measured = (traffic, error, latency)
    failed = [m for m in measured if m.phase == "Failed"]
    if failed:
        return AnalysisResult("Failed", "; ".join(f"{m.message}; query: {m.query}" for m in failed), measured)
    unsure = [m for m in measured if m.phase == "Inconclusive"]
    if unsure:
        # Too few calls explains every other Inconclusive: say it alone.
        message = traffic.message if not enough else "; ".join(m.message for m in unsure)
        return AnalysisResult("Inconclusive", message, measured)
    return AnalysisResult("Successful", "; ".join(m.message for m in measured), measured)


# --- the loop --------------------------------------------------------------------------------------------------


def run_analysis(
    measure: Callable[[float], AnalysisResult],
    thresholds: Thresholds,
    seconds: float,
    *,
    what: str,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] = lambda _line: None,
) -> AnalysisResult:
    """Measure (`measure(now)`) at the end of each interval and when `seconds` have passed: at least once,
    right away when `seconds` is 0. `what` ("payments/green") names the candidate in messages. A
    PrometheusError from `measure` ends the analysis with Error at once: the candidate is not judged."""
    t = thresholds
    start = clock()
    end = start + max(seconds, 0.0)
    interval = max(t.interval_seconds, 0.001)
    done = failed = unsure = 0
    last: AnalysisResult | None = None
    while True:
        if not _wait_until(min(start + (done + 1) * interval, end), clock, sleep, stop):
            return _ended(last, done, failed, unsure, t, f"stopped after {done} measurement(s)")
        try:
            last = measure(clock())
        except PrometheusError as error:
            return AnalysisResult("Error", f"analysis of {what} could not measure: {error}")
        done += 1
        log(f"analysis of {what} #{done}: {last.phase}: {last.message}")
        if last.phase == "Failed":
            failed, unsure = failed + 1, 0
        elif last.phase == "Inconclusive":
            unsure += 1  # a failure streak is not forgiven by a measurement that says nothing
        else:
            failed = unsure = 0
        if failed > t.failure_limit:
            return AnalysisResult(
                "Failed",
                f"{last.message} ({failed} consecutive failed measurement(s), failure_limit {t.failure_limit})",
                last.measurements,
            )
        if unsure > t.inconclusive_limit:
            return AnalysisResult(
                "Inconclusive",
                f"{last.message} ({unsure} consecutive inconclusive measurement(s), "
                f"inconclusive_limit {t.inconclusive_limit})",
                last.measurements,
            )
        if clock() >= end:
            return _ended(last, done, failed, unsure, t, f"{done} measurement(s)")


def _wait_until(
    deadline: float, clock: Callable[[], float], sleep: Callable[[float], None], stop: Callable[[], bool]
) -> bool:
    """False when stop() turned true first."""
    while True:
        if stop():
            return False
        left = deadline - clock()
        if left <= 0:
            return True
        sleep(min(left, STOP_POLL_SECONDS))


def _ended(last: AnalysisResult | None, done: int, failed: int, unsure: int, t: Thresholds, how: str) -> AnalysisResult:
    """The verdict when the window ends (or stop() ends it) within the limits: Successful only on a
    measurement that passed; failures still within failure_limit, or data still missing, leave it Inconclusive."""
    if last is None:
        return AnalysisResult("Inconclusive", f"{how}: nothing was measured")
    if last.phase == "Successful":
        return AnalysisResult("Successful", f"{how}: {last.message}", last.measurements)
    if failed:
        why = f"ended on {failed} failed measurement(s), within failure_limit {t.failure_limit}"
    else:
        why = f"ended on {unsure} inconclusive measurement(s)"
    return AnalysisResult("Inconclusive", f"{how}, {why}: {last.message}", last.measurements)


# --- from Prometheus -------------------------------------------------------------------------------------------


class PrometheusAnalyzer:
    """`model.Analyzer` reading Prometheus at `prometheus_url`. `clock` is wall time (Unix seconds): each
    measurement evaluates every query of both colors at the same instant, so both see the same window."""

    def __init__(
        self,
        prometheus_url: str,
        thresholds: Thresholds | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda _line: None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.prometheus = PrometheusClient(prometheus_url, timeout_seconds=timeout_seconds)
        self.thresholds = thresholds or Thresholds()
        self.clock, self.sleep, self.log = clock, sleep, log

    def values(self, service: str, color: str, at: float, version: str = "") -> tuple[ColorValues, dict[str, str]]:
        """One color's figures at `at`, and the queries that gave them."""
        asked = color_queries(service, color, self.thresholds.window, version)
        got = {metric: self.prometheus.value(expr, at) for metric, expr in asked.items()}
        return ColorValues(color, got["call_rate"], got["error_rate"], got["latency_p99"]), asked

    def measure(
        self, service: str, candidate: str, stable: str, at: float, versions: tuple[str, str] = ("", "")
    ) -> AnalysisResult:
        """One measurement (raises PrometheusError)."""
        mine, asked = self.values(service, candidate, at, versions[0])
        theirs, _ = self.values(service, stable, at, versions[1])
        return judge(service, mine, theirs, self.thresholds, asked)

    def analyse(
        self,
        service: str,
        candidate: str,
        stable: str,
        seconds: float,
        *,
        stop: Callable[[], bool] = lambda: False,
        versions: tuple[str, str] = ("", ""),
    ) -> AnalysisResult:
        return run_analysis(
            lambda at: self.measure(service, candidate, stable, at, versions),
            self.thresholds,
            seconds,
            what=f"{service}/{candidate}",
            clock=self.clock,
            sleep=self.sleep,
            stop=stop,
            log=self.log,
        )

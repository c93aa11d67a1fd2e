"""The vocabulary of a rollout, in Argo Rollouts' words, shared by the steps, the backends and the analysis.

A rollout moves one service from its stable color (serving now) to the
candidate color (the new version) by a strategy:

- blueGreen: the candidate runs beside the stable color behind the preview
  Service; analysis judges it; promote flips the active Service to it.
- canary: both colors sit behind the one active Service, and the share of
  the candidate's pods (hence of new connections) follows the steps'
  weights, with pauses and analysis between them; weight 100 is promotion.

Nothing here does I/O. A `Backend` acts on the world (a Kubernetes release
through helm/kubectl, or local processes in a drill); an `Analyzer` judges
the candidate from Prometheus against the stable color over the same window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Strategy = Literal["blueGreen", "canary"]
STRATEGIES: tuple[Strategy, ...] = ("blueGreen", "canary")


@dataclass(frozen=True)
class SetWeight:
    """Canary: put `weight` percent of the service's pods on the candidate color."""

    weight: int


@dataclass(frozen=True)
class Pause:
    """Wait `seconds`, or until an operator resumes or promotes when None."""

    seconds: float | None = None


@dataclass(frozen=True)
class Analysis:
    """Judge the candidate against the stable color for `seconds` (metrics, and the probes where they apply)."""

    seconds: float


Step = SetWeight | Pause | Analysis

# Phases of a rollout record (Argo's words). Progressing: steps are being taken. Paused: waiting for an
# operator or a timed pause. Degraded: aborted (by analysis or by an operator), traffic back on stable.
# Healthy: the candidate is stable, the old color scaled down. RolledBack: undone after promotion.
Phase = Literal["Progressing", "Paused", "Degraded", "Healthy", "RolledBack"]

AnalysisPhase = Literal["Successful", "Failed", "Inconclusive", "Error"]


@dataclass(frozen=True)
class Measurement:
    """One query of one analysis, for both colors: what was asked, what came back, and the verdict."""

    metric: str  # "error_rate", "latency_p99", ...
    query: str  # the candidate's PromQL, as sent
    candidate: float | None  # None: no data (the color served no call in the window)
    stable: float | None
    limit: float | None  # the threshold the candidate was held to, when there is one
    phase: AnalysisPhase
    message: str = ""


@dataclass(frozen=True)
class AnalysisResult:
    phase: AnalysisPhase
    message: str  # one line an SRE reads: which query failed with what values
    measurements: tuple[Measurement, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "message": self.message,
            "measurements": [m.__dict__ for m in self.measurements],
        }


@dataclass(frozen=True)
class Thresholds:
    """What the candidate must meet in each measurement (chart values `rollouts.analysis`, or flags).

    Passing a measurement means, over the same `window` for both colors:
    - error rate <= max(max_error_rate, stable's error rate + max_error_rate_increase): a candidate is not
      blamed for a fault the stable color shows too (a dependency down);
    - latency p99 <= stable's p99 * max_latency_p99_ratio + latency_slack_seconds;
    - at least min_call_rate calls/s reached the candidate, else the measurement is Inconclusive.
    More than `failure_limit` consecutive failed measurements fail the analysis.
    """

    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.005
    max_latency_p99_ratio: float = 1.5
    latency_slack_seconds: float = 0.025
    min_call_rate: float = 0.2
    window: str = "1m"  # PromQL range of each measurement
    interval_seconds: float = 10.0  # between measurements
    failure_limit: int = 0
    inconclusive_limit: int = 3  # consecutive Inconclusive measurements before the analysis is Inconclusive


@dataclass(frozen=True)
class ColorView:
    tag: str
    replicas: int


@dataclass(frozen=True)
class ReleaseView:
    """What a backend reports about one service now."""

    service: str
    active: str  # the stable color: the one the active Service selects
    colors: dict[str, ColorView] = field(default_factory=dict)
    preview: bool = False  # blueGreen: the preview Service is on
    canary_weight: int = 0  # canary: the candidate's share of pods, percent (0 when no canary runs)


class Backend(Protocol):
    """Where a rollout acts. Every method is idempotent: a step taken again after a crash does no harm."""

    def view(self, service: str) -> ReleaseView: ...

    def deploy(self, service: str, color: str, version: str, replicas: int) -> None:
        """Run `version` on `color` with `replicas` pods, taking no traffic yet; return once they are ready."""

    def set_preview(self, service: str, on: bool) -> None:
        """blueGreen: the preview Service selects the candidate color (on) or nothing (off)."""

    def set_weight(self, service: str, candidate: str, weight: int) -> int:
        """canary: candidate and stable pods behind the active Service in the ratio `weight`:100-`weight`.
        Returns the weight the pods actually give (replica counts are whole numbers)."""

    def set_active(self, service: str, color: str) -> None:
        """The active Service selects only `color` (blueGreen promotion, canary at 100, abort and undo)."""

    def scale_down(self, service: str, color: str) -> None: ...

    def load(self, service: str) -> tuple[dict[str, Any] | None, str]:
        """The service's rollout record (JSON) and its revision ("" when there is none)."""

    def save(self, service: str, record: dict[str, Any], revision: str) -> str:
        """Store the record if it is still at `revision` (else raise Conflict); return the new revision."""


class Conflict(Exception):
    """Someone else changed the rollout record since it was read: read it again and decide again."""


class Analyzer(Protocol):
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
        """Measure every interval for `seconds` (or until `stop()` is true) and give the verdict. `versions`:
        what the candidate and the stable color run ("" = any), so that neither is judged by a former version's
        calls still inside the window."""

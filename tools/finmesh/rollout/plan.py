"""Names, windows and the pure judgements of a rollout under Kubernetes (pods from kubectl, probe tallies).

Pure: nothing here runs a process or talks to a cluster. The helm/kubectl
commands themselves are built by finmesh.rollout.kube. Value names are the
chart's (deploy/helm/finmesh/values.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLORS = ("blue", "green")
SERVICES = ("identity", "payments", "risk", "notify")
CHART_NAME = "finmesh"
# The chart truncates names to this many characters (templates/_helpers.tpl "finmesh.fullname").
_FULLNAME_MAX = 40

# Exit codes of `finmesh rollout <verb>` (docs/DEPLOY.md "Progressive delivery with `finmesh rollout`").
EXIT_OK = 0  # the verb did what was asked; a driving verb: the candidate is promoted (old color warm or down)
EXIT_ROLLED_BACK = 1  # a driving verb ended in an abort (failed analysis or step): traffic back on stable
EXIT_REFUSED = 2  # bad arguments or rollout/cluster state: nothing was changed
EXIT_NEEDS_HUMAN = 3  # a command failed and so did the way back (or the final scale-down): read the record
EXIT_WAITING = 4  # a driving verb stopped unfinished: paused (promote/resume), or another process drives it


def other_color(color: str) -> str:
    return "green" if color == "blue" else "blue"


def grpc_service_name(service: str) -> str:
    """The gRPC service a finmesh service registers (its health status is reported under this name)."""
    return f"finmesh.{service}.v1.{service.capitalize()}Service"


def fullname(release: str, values: dict[str, Any] | None = None) -> str:
    """The chart's "finmesh.fullname": prefix of every object name of a release."""
    values = values or {}
    if values.get("fullnameOverride"):
        name = str(values["fullnameOverride"])
    else:
        chart = values.get("nameOverride") or CHART_NAME
        name = release if chart in release else f"{release}-{chart}"
    return name[:_FULLNAME_MAX].rstrip("-")


@dataclass(frozen=True)
class Cluster:
    """Where the rollout acts and with which binaries."""

    release: str = "finmesh"
    namespace: str = "finmesh"
    chart: str = "deploy/helm/finmesh"
    values_files: tuple[str, ...] = ()
    kube_context: str = ""
    helm: str = "helm"
    kubectl: str = "kubectl"


@dataclass(frozen=True)
class Windows:
    """How long each phase may take or lasts, in seconds."""

    ready_timeout: int = 300  # kubectl rollout status of the new color
    helm_timeout: int = 600  # one helm upgrade, including the migration hook Job at the deploy step
    probe_interval: float = 1.0  # between probe calls of an analysis step


# --- decisions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodState:
    """What the rollout needs to know about one pod (from `kubectl get pods -o json`)."""

    name: str
    uid: str
    phase: str
    ready: bool
    restarts: int
    # Why a container is waiting or last terminated (CrashLoopBackOff, Error, OOMKilled, ...).
    reasons: tuple[str, ...] = ()
    deleting: bool = False


# Waiting reasons that mean a container crashed or cannot start at all.
_BAD_WAITING = {
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
}


def parse_pods(doc: dict[str, Any]) -> list[PodState]:
    """PodStates from a `kubectl get pods -o json` List."""
    pods = []
    for item in doc.get("items", []):
        meta, status = item.get("metadata", {}), item.get("status", {})
        containers = status.get("containerStatuses") or []
        reasons = []
        for cs in containers:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _BAD_WAITING:
                reasons.append(waiting["reason"])
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last:
                reasons.append(f"last exit {last.get('reason', 'terminated')} (code {last.get('exitCode', '?')})")
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        pods.append(
            PodState(
                name=meta.get("name", "?"),
                uid=meta.get("uid", ""),
                phase=status.get("phase", "Unknown"),
                ready=conditions.get("Ready") == "True",
                restarts=sum(int(cs.get("restartCount", 0)) for cs in containers),
                reasons=tuple(reasons),
                deleting=bool(meta.get("deletionTimestamp")),
            )
        )
    return pods


def judge_pods(pods: list[PodState], expected: int, baseline: list[PodState] | None = None) -> list[str]:
    """Problems with one color's pods; empty means healthy.

    `baseline` is the snapshot from the start of the window: a pod that is gone
    or new since then was replaced (crashed, evicted, OOM-killed and rescheduled),
    which a fresh pod's restartCount of 0 would otherwise hide.
    """
    problems = []
    if len(pods) < expected:
        problems.append(f"{len(pods)} pods, expected {expected}")
    for pod in pods:
        if pod.restarts:
            problems.append(f"pod {pod.name} restarted {pod.restarts} time(s) {list(pod.reasons)}")
        elif pod.reasons:
            problems.append(f"pod {pod.name}: {', '.join(pod.reasons)}")
        if pod.phase != "Running":
            problems.append(f"pod {pod.name} is {pod.phase}")
        elif not pod.ready:
            problems.append(f"pod {pod.name} is not ready")
        if pod.deleting:
            problems.append(f"pod {pod.name} is being deleted")
    if baseline is not None:
        before = {p.uid: p.name for p in baseline}
        now = {p.uid: p.name for p in pods}
        problems += [
            f"pod {name} is gone (replaced during the window)" for uid, name in before.items() if uid not in now
        ]
        problems += [
            f"pod {name} is new (a replacement appeared during the window)"
            for uid, name in now.items()
            if uid not in before
        ]
    return problems


@dataclass
class ProbeTally:
    """Outcome of the probe calls of one window."""

    calls: int = 0
    failures: int = 0
    # gRPC status name (or "NOT_SERVING") -> count, for the message.
    by_reason: dict[str, int] = field(default_factory=dict)

    def record(self, failure: str | None) -> None:
        self.calls += 1
        if failure is not None:
            self.failures += 1
            self.by_reason[failure] = self.by_reason.get(failure, 0) + 1

    @property
    def error_rate(self) -> float:
        return self.failures / self.calls if self.calls else 1.0


def judge_probes(tally: ProbeTally, max_error_rate: float, min_calls: int = 3) -> list[str]:
    """Problems with a window's probe calls: too few to judge, or too many failed."""
    if tally.calls < min_calls:
        return [f"only {tally.calls} probe calls completed (need {min_calls} to judge)"]
    if tally.error_rate > max_error_rate:
        return [
            f"error rate {tally.error_rate:.1%} over {tally.calls} probe calls exceeds {max_error_rate:.1%} "
            f"({tally.by_reason})"
        ]
    return []

"""The rollout as data: the exact helm/kubectl commands of each step, and the rules that stop a rollout.

Pure: nothing here runs a process or talks to a cluster, so the dry run prints
exactly what the driver (finmesh.rollout.driver) runs, and tests can check the
decisions without one. Value names are the chart's (deploy/helm/finmesh/values.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLORS = ("blue", "green")
SERVICES = ("identity", "payments", "risk", "notify")
CHART_NAME = "finmesh"
# The chart truncates names to this many characters (templates/_helpers.tpl "finmesh.fullname").
_FULLNAME_MAX = 40

# Exit codes of `finmesh rollout`.
EXIT_PROMOTED = 0  # the new version is active and the old color is scaled down
EXIT_ROLLED_BACK = 1  # a check failed; the old color is active again and the new one is off
EXIT_REFUSED = 2  # bad arguments or cluster state: nothing was changed
EXIT_NEEDS_HUMAN = 3  # a command failed and so did the way back: read the log, fix by hand


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
    analysis: float = 60.0  # pre-promotion analysis through the preview Service
    watch: float = 120.0  # post-promotion watch through the active Service
    scale_down_delay: float = 300.0  # old color kept warm after promotion (counted from the flip)
    probe_interval: float = 1.0


@dataclass(frozen=True)
class Step:
    """One titled step of the rollout and the commands it runs (for the dry run and the log)."""

    title: str
    commands: tuple[tuple[str, ...], ...] = ()
    note: str = ""


@dataclass(frozen=True)
class RolloutPlan:
    """Rollout of `service` to image tag `version`, from the active color `from_color` to the other one."""

    cluster: Cluster
    service: str
    version: str
    from_color: str
    replicas: int
    fullname: str
    grpc_port: int = 50051
    windows: Windows = field(default_factory=Windows)

    @property
    def to_color(self) -> str:
        return other_color(self.from_color)

    def deployment(self, color: str) -> str:
        return f"{self.fullname}-{self.service}-{color}"

    @property
    def active_service(self) -> str:
        return f"{self.fullname}-{self.service}"

    @property
    def preview_service(self) -> str:
        return f"{self.fullname}-{self.service}-preview"

    def pod_selector(self, color: str) -> str:
        """The labels of one color's server pods (templates/_helpers.tpl "finmesh.selectorLabels")."""
        return ",".join(
            [
                f"app.kubernetes.io/name={self.service}",
                f"app.kubernetes.io/instance={self.cluster.release}",
                "app.kubernetes.io/component=server",
                f"finmesh.io/color={color}",
            ]
        )

    # --- helm -------------------------------------------------------------------------------------

    def _key(self, *path: str) -> str:
        return ".".join(["services", self.service, *path])

    def _sets(self, *, active: str, preview: bool, new_replicas: int, migration_color: str) -> list[str]:
        """Every value the rollout owns, at every step.

        Each upgrade repeats all of them (not only what changed): a values file
        given with --values is applied on every upgrade and would otherwise reset
        the new color's tag or size. Tags and the migration color go through
        --set-string, because --set reads a tag such as 42 or 20250601 as an
        integer, which the schema rightly refuses.
        """
        return [
            "--set",
            f"{self._key('activeColor')}={active}",
            "--set-string",
            f"{self._key(self.to_color, 'tag')}={self.version}",
            "--set",
            f"{self._key(self.to_color, 'replicas')}={new_replicas}",
            "--set",
            f"{self._key('preview', 'enabled')}={'true' if preview else 'false'}",
            "--set-string",
            f"{self._key('migration', 'color')}={migration_color}",
        ]

    def _upgrade(self, sets: list[str], *, hooks: bool) -> tuple[str, ...]:
        c = self.cluster
        argv = [c.helm, "upgrade", c.release, c.chart, "--namespace", c.namespace, "--reuse-values"]
        for path in c.values_files:
            argv += ["--values", path]
        argv += sets
        if not hooks:
            # Only the deploy step needs the pre-upgrade migration Jobs (the new code's
            # expand step). Flips and scale-downs change no schema, and a rollback must
            # not wait for a Job pod of every service to start.
            argv.append("--no-hooks")
        argv += ["--timeout", f"{self.windows.helm_timeout}s"]
        if c.kube_context:
            argv += ["--kube-context", c.kube_context]
        return tuple(argv)

    def deploy(self) -> tuple[str, ...]:
        """Start the new color with the new tag; preview Service off until its pods are ready.

        migration.color names the new color, so its code runs the expand step
        whether or not the tags are semantic versions.
        """
        sets = self._sets(
            active=self.from_color, preview=False, new_replicas=self.replicas, migration_color=self.to_color
        )
        return self._upgrade(sets, hooks=True)

    def preview_on(self) -> tuple[str, ...]:
        return self._upgrade(
            self._sets(active=self.from_color, preview=True, new_replicas=self.replicas, migration_color=self.to_color),
            hooks=False,
        )

    def promote(self) -> tuple[str, ...]:
        """Flip the active Service to the new color; the preview Service now shows the old one."""
        return self._upgrade(
            self._sets(active=self.to_color, preview=True, new_replicas=self.replicas, migration_color=self.to_color),
            hooks=False,
        )

    def finish(self) -> tuple[str, ...]:
        """After the delay: old color to 0 replicas, preview off, migration color back to the chart's rule."""
        sets = self._sets(active=self.to_color, preview=False, new_replicas=self.replicas, migration_color="")
        sets += ["--set", f"{self._key(self.from_color, 'replicas')}=0"]
        return self._upgrade(sets, hooks=False)

    def back_to_old(self) -> tuple[str, ...]:
        """Abort before promotion or roll back after it: one upgrade that points the
        active Service at the old color and turns the new one off (its pods then drain).
        """
        return self._upgrade(
            self._sets(active=self.from_color, preview=False, new_replicas=0, migration_color=""),
            hooks=False,
        )

    # --- kubectl ----------------------------------------------------------------------------------

    def _kubectl(self, *args: str) -> tuple[str, ...]:
        c = self.cluster
        argv = [c.kubectl, "--namespace", c.namespace]
        if c.kube_context:
            argv += ["--context", c.kube_context]
        return (*argv, *args)

    def wait_ready(self) -> tuple[str, ...]:
        return self._kubectl(
            "rollout",
            "status",
            f"deployment/{self.deployment(self.to_color)}",
            f"--timeout={self.windows.ready_timeout}s",
        )

    def get_pods(self, color: str) -> tuple[str, ...]:
        return self._kubectl("get", "pods", "--selector", self.pod_selector(color), "--output", "json")

    def port_forward(self, service_name: str) -> tuple[str, ...]:
        """Forward a free local port to a Service (kubectl picks one of its ready pods)."""
        return self._kubectl("port-forward", f"service/{service_name}", f":{self.grpc_port}", "--address", "127.0.0.1")

    # --- the whole script, for --dry-run ----------------------------------------------------------

    def steps(self) -> list[Step]:
        w = self.windows
        new, old = self.to_color, self.from_color
        analysis = (self.get_pods(new), self.port_forward(self.preview_service), self.get_pods(new))
        watch = (self.get_pods(new), self.port_forward(self.active_service), self.get_pods(new))
        return [
            Step(f"deploy {new} with {self.version} ({self.replicas} replicas), preview Service off", (self.deploy(),)),
            Step(f"wait until every {new} pod is ready", (self.wait_ready(),)),
            Step(f"preview Service {self.preview_service} on (selects {new}, now ready)", (self.preview_on(),)),
            Step(
                f"analysis for {w.analysis:g}s through {self.preview_service}",
                analysis,
                note=(
                    f"pods of {new} ready with zero restarts at start and end; gRPC health and probe calls "
                    f"every {w.probe_interval:g}s through the port-forward; error rate under the threshold"
                ),
            ),
            Step(f"promote: {self.active_service} selects {new}", (self.promote(),)),
            Step(
                f"watch for {w.watch:g}s through {self.active_service}",
                watch,
                note="the same checks as the analysis, now on live traffic's Service",
            ),
            Step(f"keep {old} warm until {w.scale_down_delay:g}s after the flip, then scale it to 0", (self.finish(),)),
        ]

    def rollback_step(self) -> Step:
        return Step(
            f"on any failure: {self.active_service} back to {self.from_color}, {self.to_color} to 0",
            (self.back_to_old(),),
        )


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

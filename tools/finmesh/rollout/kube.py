"""The Kubernetes backend of a rollout: helm upgrades of the chart's values, kubectl, and the record in a ConfigMap.

Every upgrade repeats every value the rollout owns for the service (on top of
--reuse-values and any -f files, so a values file cannot reset a tag half-way):
activeColor, each color's tag (--set-string: a tag such as 42 must stay a
string) and replicas, preview.enabled, canary.enabled (once a canary used it)
and migration.color. Only the deploy runs the chart's hooks (the expand
migration of the new code); flips, weights and scale-downs use --no-hooks.

Canary weights are replica counts: the stable color keeps its size N and the
candidate gets k pods, k/(N+k) ≈ weight (at least one pod), while
`services.<svc>.canary.enabled` makes the active Service select both colors.

The record lives in the ConfigMap `<fullname>-<svc>-rollout` (data key
rollout.json); `kubectl replace` with metadata.resourceVersion makes a stale
write fail with 409 Conflict, which becomes model.Conflict.

With `out` set (--dry-run) nothing changes: each mutating command is printed
instead of run, the record is kept in memory, and reads run only when a live
reader is given.
"""

from __future__ import annotations

import json
import math
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from finmesh.rollout.commands import CommandFailed, Runner
from finmesh.rollout.model import AnalysisResult, Analyzer, ColorView, Conflict, Measurement, ReleaseView
from finmesh.rollout.plan import (
    COLORS,
    Cluster,
    ProbeTally,
    Windows,
    fullname,
    judge_pods,
    judge_probes,
    other_color,
    parse_pods,
)
from finmesh.rollout.probes import Prober

RECORD_KEY = "rollout.json"
MANAGED_BY = "finmesh-rollout"
_HELM_GRACE = 30  # seconds beyond helm's own --timeout before the process is killed

# (target "127.0.0.1:port", server name for TLS) -> a Prober for that port-forward.
ProberFactory = Callable[[str, str], Prober]


@dataclass
class ServiceState:
    """The values the rollout owns for one service, as last applied."""

    active: str
    tags: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    preview: bool = False
    canary: bool | None = None  # None: the release never set canary.enabled (charts without canary)
    migration: str = ""

    @classmethod
    def from_values(cls, svc: Mapping[str, Any]) -> ServiceState:
        active = str(svc.get("activeColor", ""))
        canary = (svc.get("canary") or {}).get("enabled")
        return cls(
            active=active,
            tags={c: str(svc[c]["tag"]) for c in COLORS if (svc.get(c) or {}).get("tag") not in (None, "")},
            replicas={c: int((svc.get(c) or {}).get("replicas", 0)) for c in COLORS},
            preview=bool((svc.get("preview") or {}).get("enabled", False)),
            canary=None if canary is None else bool(canary),
            migration=str((svc.get("migration") or {}).get("color", "") or ""),
        )


class KubeBackend:
    """model.Backend over one helm release. `out`: dry run, print mutating commands instead of running them."""

    def __init__(
        self,
        cluster: Cluster,
        runner: Runner | None,
        windows: Windows | None = None,
        *,
        values: dict[str, Any] | None = None,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.runner = runner
        self.windows = windows or Windows()
        self.out = out
        self._values = values
        self._states: dict[str, ServiceState] = {}
        self._memory: dict[str, tuple[dict[str, Any], str]] = {}  # dry run: the records it would have written

    # --- values -----------------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """`helm get values --all -o json` of the release, read once."""
        if self._values is None:
            doc = self._read_json(self.get_values_argv(), 60)
            if not isinstance(doc, dict):
                raise CommandFailed(self.get_values_argv(), "printed no values")
            self._values = doc
        return self._values

    @property
    def fullname(self) -> str:
        return fullname(self.cluster.release, self.values())

    def state(self, service: str) -> ServiceState:
        if service not in self._states:
            svc = (self.values().get("services") or {}).get(service) or {}
            self._states[service] = ServiceState.from_values(svc)
        return self._states[service]

    # --- commands (pure argv) ---------------------------------------------------------------------

    def get_values_argv(self) -> tuple[str, ...]:
        c = self.cluster
        argv = [c.helm, "get", "values", c.release, "--namespace", c.namespace, "--all", "--output", "json"]
        if c.kube_context:
            argv += ["--kube-context", c.kube_context]
        return tuple(argv)

    def upgrade_argv(self, service: str, *, hooks: bool) -> tuple[str, ...]:
        st, c = self.state(service), self.cluster
        key = f"services.{service}"
        argv = [c.helm, "upgrade", c.release, c.chart, "--namespace", c.namespace, "--reuse-values"]
        for path in c.values_files:
            argv += ["--values", path]
        argv += ["--set", f"{key}.activeColor={st.active}"]
        for color in COLORS:
            if color in st.tags:
                argv += ["--set-string", f"{key}.{color}.tag={st.tags[color]}"]
            argv += ["--set", f"{key}.{color}.replicas={st.replicas.get(color, 0)}"]
        argv += ["--set", f"{key}.preview.enabled={'true' if st.preview else 'false'}"]
        if st.canary is not None:
            argv += ["--set", f"{key}.canary.enabled={'true' if st.canary else 'false'}"]
        argv += ["--set-string", f"{key}.migration.color={st.migration}"]
        if not hooks:
            # Only the deploy needs the pre-upgrade migration Jobs (the new code's expand step). Flips, weights
            # and scale-downs change no schema, and a way back must not wait for a Job pod of every service.
            argv.append("--no-hooks")
        argv += ["--timeout", f"{self.windows.helm_timeout}s"]
        if c.kube_context:
            argv += ["--kube-context", c.kube_context]
        return tuple(argv)

    def kubectl(self, *args: str) -> tuple[str, ...]:
        c = self.cluster
        argv = [c.kubectl, "--namespace", c.namespace]
        if c.kube_context:
            argv += ["--context", c.kube_context]
        return (*argv, *args)

    def deployment(self, service: str, color: str) -> str:
        return f"{self.fullname}-{service}-{color}"

    def active_service(self, service: str) -> str:
        return f"{self.fullname}-{service}"

    def preview_service(self, service: str) -> str:
        return f"{self.fullname}-{service}-preview"

    def configmap(self, service: str) -> str:
        return f"{self.fullname}-{service}-rollout"

    def wait_ready_argv(self, service: str, color: str) -> tuple[str, ...]:
        return self.kubectl(
            "rollout",
            "status",
            f"deployment/{self.deployment(service, color)}",
            f"--timeout={self.windows.ready_timeout}s",
        )

    def pod_selector(self, service: str, color: str) -> str:
        """The labels of one color's server pods (templates/_helpers.tpl "finmesh.selectorLabels")."""
        return ",".join(
            [
                f"app.kubernetes.io/name={service}",
                f"app.kubernetes.io/instance={self.cluster.release}",
                "app.kubernetes.io/component=server",
                f"finmesh.io/color={color}",
            ]
        )

    def get_pods_argv(self, service: str, color: str) -> tuple[str, ...]:
        return self.kubectl("get", "pods", "--selector", self.pod_selector(service, color), "--output", "json")

    def port_forward_argv(self, resource: str) -> tuple[str, ...]:
        """Forward a free local port to a Service or Deployment (kubectl picks one of its ready pods)."""
        port = int((self.values().get("grpc") or {}).get("port", 50051))
        return self.kubectl("port-forward", resource, f":{port}", "--address", "127.0.0.1")

    # --- running ----------------------------------------------------------------------------------

    def _read_json(self, argv: tuple[str, ...], timeout: float) -> Any:
        if self.runner is None:
            raise CommandFailed(argv, "no cluster to read from (dry run)")
        return self.runner.run_json(argv, timeout=timeout)

    def _write(self, argv: tuple[str, ...], timeout: float, stdin: str | None = None) -> str:
        if self.out is not None:
            self.out(shlex.join(argv) + (" <<< (the ConfigMap below)" if stdin else ""))
            return ""
        assert self.runner is not None
        return self.runner.run(argv, timeout=timeout, stdin=stdin)

    def _upgrade(self, service: str, *, hooks: bool = False) -> None:
        self._write(self.upgrade_argv(service, hooks=hooks), self.windows.helm_timeout + _HELM_GRACE)

    def _wait_ready(self, service: str, color: str) -> None:
        self._write(self.wait_ready_argv(service, color), self.windows.ready_timeout + _HELM_GRACE)

    # --- model.Backend ----------------------------------------------------------------------------

    def view(self, service: str) -> ReleaseView:
        svc = (self.values().get("services") or {}).get(service) or {}
        st = self.state(service)
        colors = {c: ColorView(st.tags.get(c, ""), st.replicas.get(c, 0)) for c in COLORS if c in (svc or {})}
        if st.active not in COLORS:
            raise CommandFailed(self.get_values_argv(), f"services.{service}.activeColor is {st.active!r}")
        cand = other_color(st.active)
        n, k = st.replicas.get(st.active, 0), st.replicas.get(cand, 0)
        weight = round(100 * k / (n + k)) if st.canary and n + k else 0
        return ReleaseView(service, st.active, colors, st.preview, weight)

    def deploy(self, service: str, color: str, version: str, replicas: int) -> None:
        st = self.state(service)
        st.tags[color], st.replicas[color] = version, replicas
        st.preview = False
        if st.canary:
            st.canary = False
        # migration.color names the new color, so its code runs the expand step whatever the tags look like.
        st.migration = color
        self._upgrade(service, hooks=True)
        self._wait_ready(service, color)

    def set_preview(self, service: str, on: bool) -> None:
        st = self.state(service)
        if st.preview == on:
            return
        st.preview = on
        self._upgrade(service)

    def set_weight(self, service: str, candidate: str, weight: int) -> int:
        st = self.state(service)
        n = st.replicas.get(other_color(candidate), 0)
        pods = candidate_pods(n, weight)
        grew = pods > st.replicas.get(candidate, 0)
        st.replicas[candidate] = pods
        st.canary = pods > 0
        st.preview = False
        self._upgrade(service)
        if grew:
            self._wait_ready(service, candidate)
        return round(100 * pods / (n + pods)) if pods else 0

    def set_active(self, service: str, color: str) -> None:
        st = self.state(service)
        st.active = color
        if st.canary is not None:
            st.canary = False
        self._upgrade(service)

    def scale_down(self, service: str, color: str) -> None:
        st = self.state(service)
        if color == st.active:
            raise CommandFailed(self.upgrade_argv(service, hooks=False), f"refusing to scale the active color {color}")
        st.replicas[color] = 0
        # The chart refuses a preview Service with no pods behind it; the migration color goes back to its rule.
        st.preview, st.migration = False, ""
        if st.canary is not None:
            st.canary = False
        self._upgrade(service)

    def load(self, service: str) -> tuple[dict[str, Any] | None, str]:
        if service in self._memory:
            doc, revision = self._memory[service]
            return json.loads(json.dumps(doc)), revision
        if self.runner is None:
            return None, ""
        argv = self.kubectl("get", "configmap", self.configmap(service), "--output", "json")
        try:
            cm = self.runner.run_json(argv, timeout=30)
        except CommandFailed as error:
            if "(NotFound)" in error.reason:
                return None, ""
            raise
        data = (cm or {}).get("data") or {}
        if RECORD_KEY not in data:
            return None, str(cm["metadata"]["resourceVersion"])
        return json.loads(data[RECORD_KEY]), str(cm["metadata"]["resourceVersion"])

    def save(self, service: str, record: dict[str, Any], revision: str) -> str:
        cm = self.configmap_doc(service, record, revision)
        verb = "replace" if revision else "create"
        argv = self.kubectl(verb, "--filename", "-", "--output", "json")
        if self.out is not None:
            new = str(int(revision or 0) + 1)
            self._memory[service] = (record, new)
            self.out(shlex.join(argv) + f"  # ConfigMap {cm['metadata']['name']}: {_gist(record)}")
            return new
        assert self.runner is not None
        try:
            written = self.runner.run_json(argv, timeout=30, stdin=json.dumps(cm))
        except CommandFailed as error:
            if "(Conflict)" in error.reason or "(AlreadyExists)" in error.reason:
                raise Conflict(error.reason) from error
            raise
        return str(written["metadata"]["resourceVersion"])

    def configmap_doc(self, service: str, record: dict[str, Any], revision: str) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.configmap(service),
            "namespace": self.cluster.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/name": service,
                "app.kubernetes.io/instance": self.cluster.release,
                "app.kubernetes.io/component": "rollout",
            },
        }
        if revision:
            meta["resourceVersion"] = revision
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {RECORD_KEY: json.dumps(record, indent=1, sort_keys=True)},
        }


def candidate_pods(stable: int, weight: int) -> int:
    """Candidate pods beside `stable` ones so that their share is `weight` percent: at least one, N at 100."""
    if weight <= 0:
        return 0
    if weight >= 100:
        return stable
    return max(1, math.floor(stable * weight / (100 - weight) + 0.5))


def _gist(record: dict[str, Any]) -> str:
    return f"phase={record.get('phase')} step={record.get('stepIndex')} weight={record.get('weight')}"


# --- analysis under Kubernetes: pods, probes through a port-forward, and the metric analyzer ---------------


class KubeAnalyzer:
    """model.Analyzer: the candidate's pods (ready, no restart, none replaced) at the start and the end, probe
    calls (health; payments: a read and a synthetic payment at both ends) through a port-forward, and, beside
    them, the metric analysis of `metrics` (Prometheus) when there is one. Any failure fails the analysis."""

    def __init__(
        self,
        backend: KubeBackend,
        runner: Runner | None,
        probers: ProberFactory,
        *,
        metrics: Analyzer | None,
        max_error_rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend
        self.runner = runner
        self.probers = probers
        self.metrics = metrics
        self.max_error_rate = max_error_rate
        self.clock = clock
        self.sleep = sleep

    def _target(self, service: str, candidate: str) -> tuple[str, str]:
        """Where the probes go: the Service that shows the candidate (active after promotion, else preview), or,
        in a canary where the active Service mixes both colors, a candidate pod through its Deployment."""
        b, st = self.backend, self.backend.state(service)
        if st.active == candidate:
            return f"service/{b.active_service(service)}", b.active_service(service)
        if st.preview:
            return f"service/{b.preview_service(service)}", b.preview_service(service)
        return f"deployment/{b.deployment(service, candidate)}", b.active_service(service)

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
        b = self.backend
        resource, server_name = self._target(service, candidate)
        expected = b.state(service).replicas.get(candidate, 0)
        if b.out is not None:
            pods = shlex.join(b.get_pods_argv(service, candidate))
            for line in (pods, shlex.join(b.port_forward_argv(resource)) + " &", pods):
                b.out(line)
            what = "metric analysis against Prometheus and " if self.metrics else ""
            b.out(f"#    {what}probe calls for {seconds:g}s through {resource}")
            return AnalysisResult("Successful", "dry run")
        assert self.runner is not None
        try:
            baseline, problems = self._pods(service, candidate, expected)
            if problems:
                return _failed(problems)
            tally, metric, problems = self._window(
                service, (candidate, stable), versions, seconds, resource, server_name, stop
            )
            _, end = self._pods(service, candidate, expected, baseline)
            problems += end
        except CommandFailed as error:
            return _failed([str(error)])
        if tally.calls or not problems:  # a window cut short by a failure is not also "too few probe calls"
            problems += judge_probes(tally, self.max_error_rate)
        probes = Measurement(
            "probe_error_rate",
            f"gRPC health{' + synthetic payment' if service == 'payments' else ''} via port-forward {resource}",
            tally.error_rate if tally.calls else None,
            None,
            self.max_error_rate,
            "Failed" if problems else "Successful",
            f"{tally.calls} probe calls, {tally.failures} failed",
        )
        measurements = (*(metric.measurements if metric else ()), probes)
        if problems:
            return AnalysisResult("Failed", "; ".join(problems), measurements)
        if metric is not None and metric.phase != "Successful":
            return AnalysisResult(metric.phase, metric.message, measurements)
        message = f"{tally.calls} probe calls, {tally.failures} failed" + (f"; {metric.message}" if metric else "")
        return AnalysisResult("Successful", message, measurements)

    def _pods(self, service: str, color: str, expected: int, baseline: Any = None) -> tuple[Any, list[str]]:
        assert self.runner is not None
        doc = self.runner.run_json(self.backend.get_pods_argv(service, color), timeout=30)
        pods = parse_pods(doc or {})
        return pods, [f"pods: {p}" for p in judge_pods(pods, expected, baseline)]

    def _window(
        self,
        service: str,
        colors: tuple[str, str],
        versions: tuple[str, str],
        seconds: float,
        resource: str,
        server_name: str,
        stop: Callable[[], bool],
    ) -> tuple[ProbeTally, AnalysisResult | None, list[str]]:
        assert self.runner is not None
        tally, problems = ProbeTally(), []
        interval = self.backend.windows.probe_interval
        with (
            self.runner.port_forward(self.backend.port_forward_argv(resource)) as port,
            self.probers(f"127.0.0.1:{port}", server_name) as prober,
        ):
            failure = prober.synthetic_call()
            if failure:
                return tally, None, [failure]
            done = threading.Event()

            def probing() -> None:
                while not done.is_set():
                    tally.record(prober.probe())
                    done.wait(interval)

            def failing() -> bool:
                return tally.calls >= 3 and bool(judge_probes(tally, self.max_error_rate))

            thread = threading.Thread(target=probing, daemon=True)
            thread.start()
            metric: AnalysisResult | None = None
            try:
                if self.metrics is not None:
                    metric = self.metrics.analyse(
                        service, *colors, seconds, stop=lambda: failing() or stop(), versions=versions
                    )
                else:
                    deadline = self.clock() + seconds
                    while (left := deadline - self.clock()) > 0 and not failing() and not stop():
                        self.sleep(min(left, interval))
            finally:
                done.set()
                thread.join(10)
            failure = prober.synthetic_call()
            if failure:
                problems.append(failure)
        return tally, metric, problems


def _failed(problems: list[str]) -> AnalysisResult:
    return AnalysisResult("Failed", "; ".join(problems))

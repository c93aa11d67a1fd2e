"""Drives one rollout through the plan's steps; any failed check or command takes the way back at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from finmesh.rollout.commands import CommandFailed, Runner
from finmesh.rollout.plan import (
    EXIT_NEEDS_HUMAN,
    EXIT_PROMOTED,
    EXIT_ROLLED_BACK,
    PodState,
    ProbeTally,
    RolloutPlan,
    judge_pods,
    judge_probes,
    parse_pods,
)
from finmesh.rollout.probes import Prober

# (target "127.0.0.1:port", server name for TLS) -> a Prober for that port-forward.
ProberFactory = Callable[[str, str], Prober]


class _Abort(Exception):
    """A check or command failed before the rollout finished: go back to the old color."""


@dataclass
class Driver:
    plan: RolloutPlan
    runner: Runner
    probers: ProberFactory
    log: Callable[[str], None]
    max_error_rate: float = 0.01
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(self) -> int:
        """Deploy, analyse, promote, watch, scale down; exit code from finmesh.rollout.plan."""
        p, w = self.plan, self.plan.windows
        self.log(
            f"rollout {p.service} to {p.version}: {p.from_color} -> {p.to_color} "
            f"(release {p.cluster.release}, namespace {p.cluster.namespace})"
        )
        try:
            self._command(p.deploy(), w.helm_timeout + 30, f"deploy {p.to_color}")
            self._command(p.wait_ready(), w.ready_timeout + 30, f"{p.to_color} did not become ready")
            # Only now: the preview Service must never select pods that are not ready.
            self._command(p.preview_on(), w.helm_timeout + 30, "preview Service on")
            self._window("analysis", p.preview_service, w.analysis)
            self._command(p.promote(), w.helm_timeout + 30, "promote")
            flipped_at = self.clock()
            self.log(f"promoted: {p.active_service} selects {p.to_color} ({p.version})")
            self._window("post-promotion watch", p.active_service, w.watch)
            hold = flipped_at + w.scale_down_delay - self.clock()
            if hold > 0:
                self.log(f"keeping {p.from_color} warm for {hold:.0f}s more")
                self.sleep(hold)
        except _Abort as reason:
            return self._back(str(reason))
        except KeyboardInterrupt:
            return self._back("interrupted")
        try:
            self.runner.run(p.finish(), timeout=w.helm_timeout + 30)
        except CommandFailed as error:
            # The new color is active and healthy; only the clean-up failed.
            self.log(f"promoted, but scaling {p.from_color} down failed: {error}")
            return EXIT_NEEDS_HUMAN
        self.log(f"done: {p.service} {p.version} on {p.to_color}; {p.from_color} scaled to 0")
        return EXIT_PROMOTED

    def _command(self, argv: tuple[str, ...], timeout: float, what: str) -> str:
        try:
            return self.runner.run(argv, timeout=timeout)
        except CommandFailed as error:
            raise _Abort(f"{what}: {error.reason}") from error

    def _pods(self, expected: int, baseline: list[PodState] | None = None) -> tuple[list[PodState], list[str]]:
        doc = self.runner.run_json(self.plan.get_pods(self.plan.to_color), timeout=30)
        pods = parse_pods(doc or {})
        return pods, judge_pods(pods, expected, baseline)

    def _window(self, name: str, service_name: str, seconds: float) -> None:
        """Checks of the new color for `seconds`: pods at start and end, probes through `service_name`."""
        p, w = self.plan, self.plan.windows
        try:
            baseline, problems = self._pods(p.replicas)
            if problems:
                raise _Abort(f"{name}: {'; '.join(problems)}")
            tally = ProbeTally()
            with (
                self.runner.port_forward(p.port_forward(service_name)) as port,
                self.probers(f"127.0.0.1:{port}", service_name) as prober,
            ):
                failure = prober.synthetic_call()
                if failure:
                    raise _Abort(f"{name}: {failure}")
                deadline = self.clock() + seconds
                while self.clock() < deadline:
                    tally.record(prober.probe())
                    self.sleep(w.probe_interval)
                failure = prober.synthetic_call()
                if failure:
                    raise _Abort(f"{name}: {failure}")
            _, problems = self._pods(p.replicas, baseline)
        except CommandFailed as error:
            raise _Abort(f"{name}: {error}") from error
        problems += judge_probes(tally, self.max_error_rate)
        self.log(f"{name}: {tally.calls} probe calls, {tally.failures} failed")
        if problems:
            raise _Abort(f"{name}: {'; '.join(problems)}")

    def _back(self, reason: str) -> int:
        p = self.plan
        self.log(f"ABORT: {reason}")
        self.log(f"rolling back: {p.active_service} -> {p.from_color}, {p.to_color} to 0 replicas")
        try:
            self.runner.run(p.back_to_old(), timeout=p.windows.helm_timeout + 30)
        except CommandFailed as error:
            self.log(f"ROLLBACK FAILED: {error}")
            return EXIT_NEEDS_HUMAN
        self.log(f"rolled back: {p.service} runs on {p.from_color} again")
        return EXIT_ROLLED_BACK

"""Keeps the local mesh up as a cluster would: a service that dies is restarted, with backoff, and said so.

A crash counts as fast when the service had run less than `stable_after` seconds; each fast crash in a row
doubles the wait before the next start (from `first_delay`, at most `max_delay`), and a run that lasted longer
starts the count again. After `restarts` fast crashes in a row were restarted, the next one is a crash loop
(a port taken, a broken database): the runner gives up and the caller stops the mesh.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from finmesh.cli.mesh import Mesh, is_serving
from finmesh.platform.backoff import Backoff


@dataclass(frozen=True)
class RestartPolicy:
    restarts: int = 5
    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 30.0

    def delay(self, attempt: int) -> float:
        """The wait before restart `attempt` (1: the first): the ceiling alone, no jitter, so a developer
        watching the mesh sees the same waits every time."""
        return Backoff(self.first_delay, self.max_delay).ceiling(attempt - 1)


@dataclass
class CrashCount:
    """One service's fast crashes in a row."""

    fast_in_a_row: int = 0

    def crashed(self, uptime: float, policy: RestartPolicy) -> float | None:
        """The wait before restarting after a crash `uptime` seconds after its start; None: give up."""
        if uptime >= policy.stable_after:
            self.fast_in_a_row = 0
        self.fast_in_a_row += 1
        if self.fast_in_a_row > policy.restarts:
            return None
        return policy.delay(self.fast_in_a_row)


def describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


@dataclass
class Supervisor:
    mesh: Mesh
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    out: TextIO = field(default_factory=lambda: sys.stderr)
    counts: dict[str, CrashCount] = field(default_factory=dict)
    # Service -> when its restart is due; service -> when it was restarted, until it answers SERVING.
    restart_at: dict[str, float] = field(default_factory=dict)
    awaiting_health: dict[str, float] = field(default_factory=dict)

    def run(self, stopping: Callable[[], bool], poll_seconds: float = 0.2) -> str | None:
        """Watch until `stopping()` (None) or a crash loop (why the runner gave up)."""
        while not stopping():
            if (gave_up := self.check(time.monotonic())) is not None:
                return gave_up
            time.sleep(poll_seconds)
        return None

    def check(self, now: float) -> str | None:
        """One look at every service: start those whose restart is due, note deaths and recoveries."""
        for name, proc in self.mesh.processes.items():
            if name in self.restart_at:
                if now >= self.restart_at[name]:
                    self._restart(name, now)
                continue
            code = proc.process.poll()
            if code is None:
                if name in self.awaiting_health and is_serving(proc.target, timeout=0.5):
                    self._say(f"{name} SERVING again ({now - self.awaiting_health.pop(name):.1f}s after its restart)")
                continue
            self.awaiting_health.pop(name, None)
            uptime = now - proc.started_at
            exited = f"{name} exited ({describe_exit(code)}) after {uptime:.1f}s"
            delay = self.counts.setdefault(name, CrashCount()).crashed(uptime, self.policy)
            if delay is None:
                return (
                    f"{exited}: {self.policy.restarts + 1} fast crashes in a row; giving up, stopping the mesh "
                    f"(see {proc.log_path})"
                )
            self._say(
                f"{exited}; restarting it in {delay:g}s (attempt {self.counts[name].fast_in_a_row} "
                f"of {self.policy.restarts})"
            )
            self.restart_at[name] = now + delay
        return None

    def _restart(self, name: str, now: float) -> None:
        del self.restart_at[name]
        proc = self.mesh.restart(name)
        self.awaiting_health[name] = now
        # The same shape as `finmesh up`'s listing: where it listens (unchanged) and the pid to kill next.
        self._say(
            f"  {name:<9} {proc.target}   pid {proc.process.pid}   restarted "
            f"(attempt {self.counts[name].fast_in_a_row})"
        )

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

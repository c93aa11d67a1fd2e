"""A rollout `Backend` (finmesh.rollout.model) over local processes: what the drill runs the Controller against.

Per service: one process per color (blue, green) started with its version
and FINMESH_DEPLOYMENT_COLOR, an *active* forwarder standing in for the
active Service (kube-proxy's weighted per-connection choice, see
finmesh.drill.forwarder) and a *preview* forwarder for the preview Service.
A color's `replicas` are the pods it would run: the drill runs one process
per color and weighs it as that many pods in the active forwarder, so a
canary at 10 % of 20 pods is 2 pods of green against 18 of blue.

A version named in `faulty` starts as a bad build (finmesh.drill.faulty): the
same service, with a share of its calls failing or slow before the handler.

The rollout record is a JSON file per service with a revision counter: a save
at a revision someone else has moved past raises model.Conflict, as a
ConfigMap update at a stale resourceVersion would.

The Controller is synchronous, so it runs in a worker thread
(`asyncio.to_thread`) while the forwarders, the processes' health checks and
the drill's load run in the event loop: every method here hands its async
part to the loop with `run_coroutine_threadsafe` and waits for it, and must
not be called from the loop's own thread (it would wait for itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import random
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from finmesh.cli.mesh import free_port
from finmesh.drill.faulty import Faults
from finmesh.drill.forwarder import Forwarder
from finmesh.drill.processes import DrainReport, ServiceProcess, start_service, terminate, wait_serving
from finmesh.rollout.model import ColorView, Conflict, ReleaseView

COLORS = ("blue", "green")
T = TypeVar("T")
# Long enough for a cold start of a service on a busy 2-core machine, short enough to end a stuck drill.
_STEP_TIMEOUT = 60.0


@dataclass
class _Color:
    version: str = ""
    replicas: int = 0
    metrics_port: int = 0
    process: ServiceProcess | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.process.poll() is None


@dataclass
class _Service:
    env: dict[str, str]
    active: str
    active_service: Forwarder
    preview_service: Forwarder
    colors: dict[str, _Color] = field(default_factory=dict)
    preview: bool = False
    canary: tuple[str, int] | None = None  # (candidate color, effective weight)


class LocalBackend:
    """model.Backend over local processes; build it in the event loop, then use it from a worker thread."""

    def __init__(
        self,
        state_dir: Path,
        log_dir: Path,
        *,
        pods: int = 20,
        faulty: Mapping[str, Faults] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        seed: int | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._state_dir = state_dir
        self._log_dir = log_dir
        self.pods = pods  # a service's size: the canary and the stable color share these pods
        self._faulty = dict(faulty or {})
        self._services: dict[str, _Service] = {}
        self._lock = threading.RLock()
        self.processes: list[ServiceProcess] = []  # every process ever started, for exit codes and clean-up
        self.drains: list[DrainReport] = []  # every scale-down or replacement, in order
        # What the rollout asked, in order: (time.monotonic(), verb, *arguments) (the drill's evidence).
        self.actions: list[tuple[Any, ...]] = []
        self._rng = random.Random(seed)
        state_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)

    # ---- set-up and clean-up, in the event loop

    async def add_service(self, service: str, env: dict[str, str], *, color: str, version: str) -> None:
        """Start `service` at `version` on `color`, the stable color, with all the pods behind the active Service."""
        # Seeded: the active Service's random picks are then the same from run to run (see finmesh.drill.forwarder).
        active, preview = Forwarder(rng=random.Random(self._rng.random())), Forwarder()
        await active.start()
        await preview.start()
        state = _Service(env, color, active, preview, {c: _Color(metrics_port=free_port()) for c in COLORS})
        with self._lock:
            self._services[service] = state
        await self._deploy(service, color, version, self.pods)
        active.set_weights({self._target(state, color): self.pods})

    def active_target(self, service: str) -> str:
        return self._services[service].active_service.target

    def preview_target(self, service: str) -> str:
        return self._services[service].preview_service.target

    def forwarder(self, service: str) -> Forwarder:
        """The active Service's stand-in (its counters tell where connections went)."""
        return self._services[service].active_service

    def metrics_targets(self, service: str) -> dict[str, str]:
        """color -> host:port of its /metrics, fixed for the backend's life (Prometheus scrapes them)."""
        return {c: f"127.0.0.1:{s.metrics_port}" for c, s in self._services[service].colors.items()}

    def process(self, service: str, color: str) -> ServiceProcess | None:
        return self._services[service].colors[color].process

    async def close(self) -> None:
        """SIGTERM every process still running and close the forwarders; leaves nothing running."""
        for proc in self.processes:
            if proc.process.poll() is None:
                proc.process.terminate()
        for proc in self.processes:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.process.wait), 15)
            except TimeoutError:
                proc.process.kill()
                proc.process.wait()
        for state in self._services.values():
            await state.active_service.close()
            await state.preview_service.close()

    # ---- model.Backend, from a worker thread

    def view(self, service: str) -> ReleaseView:
        with self._lock:
            state = self._services[service]
            return ReleaseView(
                service=service,
                active=state.active,
                colors={c: ColorView(s.version, s.replicas if s.running else 0) for c, s in state.colors.items()},
                preview=state.preview,
                canary_weight=state.canary[1] if state.canary else 0,
            )

    def deploy(self, service: str, color: str, version: str, replicas: int) -> None:
        self.actions.append((time.monotonic(), "deploy", service, color, version, str(replicas)))
        self._wait(self._deploy(service, color, version, replicas))

    def set_preview(self, service: str, on: bool) -> None:
        self.actions.append((time.monotonic(), "set_preview", service, str(on)))
        with self._lock:
            state = self._services[service]
            candidate = self._candidate(state)
            if on and candidate is None:
                raise RuntimeError(f"{service}: no candidate color runs: deploy one before the preview")
            state.preview_service.set_weights({self._target(state, candidate): 1} if on and candidate else {})
            state.preview = on

    def set_weight(self, service: str, candidate: str, weight: int) -> int:
        self.actions.append((time.monotonic(), "set_weight", service, candidate, str(weight)))
        with self._lock:
            state = self._services[service]
            if candidate == state.active:
                raise RuntimeError(f"{service}: {candidate} is the stable color, not a candidate")
            if not state.colors[candidate].running:
                raise RuntimeError(f"{service}: {candidate} runs no process: deploy it before setting a weight")
            pods = self.canary_pods(weight)
            stable = state.colors[state.active]
            state.colors[candidate].replicas, stable.replicas = pods, self.pods - pods
            state.active_service.set_weights(
                {self._target(state, state.active): stable.replicas, self._target(state, candidate): pods}
            )
            effective = round(100 * pods / self.pods)
            state.canary = (candidate, effective) if pods else None
            return effective

    def set_active(self, service: str, color: str) -> None:
        self.actions.append((time.monotonic(), "set_active", service, color))
        with self._lock:
            state = self._services[service]
            if not state.colors[color].running:
                raise RuntimeError(f"{service}: {color} runs no process: the active Service would select no pod")
            state.colors[color].replicas = self.pods
            state.active_service.set_weights({self._target(state, color): self.pods})
            state.active, state.canary = color, None
            if state.preview:  # the preview Service now selects the other color (the previous version), if any
                other = self._candidate(state)
                state.preview_service.set_weights({self._target(state, other): 1} if other else {})

    def scale_down(self, service: str, color: str) -> None:
        self.actions.append((time.monotonic(), "scale_down", service, color))
        with self._lock:
            state = self._services[service]
            if color == state.active:
                raise RuntimeError(f"{service}: {color} is active: scaling it down would leave the Service no pod")
            target = self._target(state, color) if state.colors[color].process else None
            for forwarder in (state.active_service, state.preview_service):
                forwarder.set_weights({t: w for t, w in forwarder.endpoints.items() if t != target})
            if state.canary and state.canary[0] == color:
                state.canary = None
                state.colors[state.active].replicas = self.pods
            state.colors[color].replicas = 0
        self._wait(self._stop(service, color))

    def load(self, service: str) -> tuple[dict[str, Any] | None, str]:
        with self._locked(service):
            stored = self._read(service)
        return (stored["record"], str(stored["revision"])) if stored else (None, "")

    def save(self, service: str, record: dict[str, Any], revision: str) -> str:
        with self._locked(service):
            stored = self._read(service)
            current = str(stored["revision"]) if stored else ""
            if revision != current:
                raise Conflict(f"{service}: the record is at revision {current or 'none'}, not {revision or 'none'}")
            new = str(int(current or 0) + 1)
            path = self._path(service)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"revision": int(new), "record": record}, indent=1, sort_keys=True))
            os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one
            return new

    # ---- helpers

    def canary_pods(self, weight: int) -> int:
        """The candidate's pods for `weight` percent: rounded up to a whole pod (at least one when weight > 0),
        and leaving at least one stable pod below 100."""
        if weight <= 0:
            return 0
        if weight >= 100:
            return self.pods
        return min(self.pods - 1, max(1, math.ceil(self.pods * weight / 100)))

    def _candidate(self, state: _Service) -> str | None:
        others = [c for c, s in state.colors.items() if c != state.active and s.running]
        return others[0] if others else None

    @staticmethod
    def _target(state: _Service, color: str) -> str:
        process = state.colors[color].process
        if process is None:
            raise RuntimeError(f"{color} runs no process")
        return process.target

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` in the event loop and wait for it here (a worker thread)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs in this thread: the expected case
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("LocalBackend methods block: call them from a worker thread (asyncio.to_thread)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_STEP_TIMEOUT)

    async def _deploy(self, service: str, color: str, version: str, replicas: int) -> None:
        state = self._services[service]
        current = state.colors[color]
        if current.running and current.version == version:
            current.replicas = replicas  # idempotent: the same version on the same color is already there
            return
        if color == state.active and current.running:
            raise RuntimeError(f"{service}: {color} is active: deploy the new version on the other color")
        if current.process is not None:
            await self._stop(service, color)
        env = {**state.env, "FINMESH_METRICS_PORT": str(current.metrics_port)}
        n = sum(1 for p in self.processes if p.service == service and p.color == color)
        proc = start_service(
            service,
            color=color,
            version=version,
            env=env,
            log_dir=self._log_dir,
            label=f"{service}-{color}-{version}-{n}",
            faults=self._faulty.get(version),
        )
        self.processes.append(proc)
        await wait_serving(proc, timeout=_STEP_TIMEOUT)
        with self._lock:
            current.process, current.version, current.replicas = proc, version, replicas

    async def _stop(self, service: str, color: str) -> None:
        current = self._services[service].colors[color]
        if current.process is not None and current.running:
            self.drains.append(await terminate(current.process))
        current.process = None

    def _path(self, service: str) -> Path:
        return self._state_dir / f"{service}.rollout.json"

    def _read(self, service: str) -> dict[str, Any] | None:
        path = self._path(service)
        return json.loads(path.read_text()) if path.exists() else None

    @contextlib.contextmanager
    def _locked(self, service: str) -> Iterator[None]:
        """This thread's lock and a file lock: two operators (processes) over one state dir serialize too."""
        with self._lock, (self._state_dir / f"{service}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

"""Starts the four services as separate processes on loopback, with the local fakes they need, and stops them.

A service that exited can be started again on its port (`Mesh.restart`); `finmesh up` decides when
(finmesh.cli.supervisor).

Auth is enforced (the default): the services share the data dir, so they
derive their service credentials from the one mesh secret generated there.
The fakes are the SMS provider (one-time codes reach a "handset" the demo
reads) and the identity registry (real-name checks); their API keys are
generated once into `<data dir>/fakes.json` (mode 0600, never printed).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Start order: callees first, so a caller's first calls find them up.
SERVICES = ("notify", "risk", "payments", "identity")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int = 0
    # Identity's JWKS (GET /.well-known/jwks.json); 0 for the other services.
    jwks_port: int = 0
    started_at: float = field(default_factory=time.monotonic)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_target(self) -> str:
        """Where Prometheus scrapes this service (host:port; the path is /metrics)."""
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.jwks_port}/.well-known/jwks.json" if self.jwks_port else ""


@dataclass(frozen=True)
class Fake:
    """A local fake HTTP server: where it listens and the API key it wants."""

    url: str
    api_key: str = field(repr=False)


FAKES_FILE = "fakes.json"
# Where a running mesh's services listen, for commands run beside it (`finmesh token`): no secrets in it.
MESH_FILE = "mesh.json"
# Fake name -> (module, the env a service reads its URL and key from).
_FAKES = {
    "sms": ("finmesh.fakes.sms", "FINMESH_SMS_URL", "FINMESH_SMS_API_KEY"),
    "registry": ("finmesh.fakes.registry", "FINMESH_IDENTITY_REGISTRY_URL", "FINMESH_IDENTITY_REGISTRY_API_KEY"),
}


def load_fakes(data_dir: Path) -> dict[str, Fake]:
    """The fakes a mesh in `data_dir` runs (empty when none was started there)."""
    path = Path(data_dir) / FAKES_FILE
    if not path.exists():
        return {}
    return {name: Fake(**values) for name, values in json.loads(path.read_text(encoding="utf-8")).items()}


def fake_env(fakes: dict[str, Fake]) -> dict[str, str]:
    """Where a service finds each of these fakes, and its key, as the service's environment."""
    env: dict[str, str] = {}
    for name, fake in fakes.items():
        _, url_var, key_var = _FAKES[name]
        env.update({url_var: fake.url, key_var: fake.api_key})
    return env


def _write_fakes(data_dir: Path, fakes: dict[str, Fake]) -> None:
    path = data_dir / FAKES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({n: {"url": x.url, "api_key": x.api_key} for n, x in fakes.items()}, f)


def load_targets(data_dir: Path) -> dict[str, str]:
    """The targets (host:port) of the mesh last started in `data_dir` (empty when none was)."""
    path = Path(data_dir) / MESH_FILE
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8"))["targets"])


def _wait_listening(port: int, process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise RuntimeError(f"fake {name} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fake {name} not listening after {timeout}s")
        time.sleep(0.05)


@dataclass
class Mesh:
    """The mesh as child processes. `database_urls` maps a service to a URL; others use SQLite in data_dir."""

    data_dir: Path
    base_port: int | None = None
    database_urls: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    # Start the fake SMS provider and identity registry with the services (see module docstring).
    with_fakes: bool = True
    fakes: dict[str, Fake] = field(default_factory=dict)
    fake_processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Where each service finds the others and the fakes: kept, so a restarted service gets the same.
    service_env: dict[str, str] = field(default_factory=dict)

    @property
    def span_dir(self) -> Path:
        return self.data_dir / "spans"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def ports(self) -> dict[str, int]:
        if self.base_port:
            return {name: self.base_port + i for i, name in enumerate(("identity", "payments", "risk", "notify"))}
        return {name: free_port() for name in SERVICES}

    def metrics_ports(self) -> dict[str, int]:
        """Each service's /metrics port: base port + 10 onwards (after the fakes), or free ports."""
        if self.base_port:
            return {name: self.base_port + 10 + i for i, name in enumerate(("identity", "payments", "risk", "notify"))}
        return {name: free_port() for name in SERVICES}

    def jwks_port(self) -> int:
        """Identity's JWKS port: base port + 14 (after the metrics ports), or a free port."""
        return self.base_port + 14 if self.base_port else free_port()

    def start(self, timeout: float = 30.0) -> None:
        self.span_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = self.ports()
        metrics_ports = self.metrics_ports()
        self.service_env = {f"FINMESH_{name.upper()}_TARGET": f"127.0.0.1:{port}" for name, port in ports.items()}
        try:
            if self.with_fakes:
                self.service_env.update(self.start_fakes(timeout))
            for name in SERVICES:
                jwks_port = self.jwks_port() if name == "identity" else 0
                self.start_one(name, ports[name], self.service_env, metrics_ports[name], jwks_port)
            self.wait_ready(timeout)
            record = {"targets": self.targets(), "jwks_url": self.processes["identity"].jwks_url}
            (self.data_dir / MESH_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        except BaseException:
            self.stop()  # leave no fake or service behind
            raise

    def start_fakes(self, timeout: float = 30.0) -> dict[str, str]:
        """Start the fakes (ports after the services' with a base port), record them; returns the services' env."""
        known = load_fakes(self.data_dir)
        for i, (name, (module, _, _)) in enumerate(_FAKES.items()):
            port = self.base_port + 4 + i if self.base_port else free_port()
            # One key per data dir, reused across restarts.
            key = known[name].api_key if name in known else secrets.token_urlsafe(24)
            with (self.log_dir / f"fake-{name}.log").open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", module, "--port", str(port)],
                    env={**os.environ, "FINMESH_FAKE_API_KEY": key},
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
            self.fake_processes[name] = process
            _wait_listening(port, process, name, timeout)
            self.fakes[name] = Fake(f"http://127.0.0.1:{port}", key)
        _write_fakes(self.data_dir, self.fakes)
        return fake_env(self.fakes)

    def start_one(
        self, name: str, port: int, targets: dict[str, str], metrics_port: int = 0, jwks_port: int = 0
    ) -> ServiceProcess:
        if not metrics_port:
            metrics_port = free_port()
        if name == "identity" and not jwks_port:
            jwks_port = free_port()
        env = {
            # Not the shell's OTEL_SERVICE_NAME: it would win over each service's own name (the resource puts the
            # environment first), and four processes would report as one.
            **{k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"},
            **targets,
            "FINMESH_PORT": str(port),
            "FINMESH_METRICS_PORT": str(metrics_port),
            "FINMESH_DATA_DIR": str(self.data_dir),
            "FINMESH_SPAN_FILE": str(self.span_dir / f"{name}.jsonl"),
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            **({"FINMESH_JWKS_PORT": str(jwks_port)} if jwks_port else {}),
            **self.extra_env,
        }
        if name in self.database_urls:
            env["FINMESH_DATABASE_URL"] = self.database_urls[name]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            # A session of its own: Ctrl-C in the terminal reaches only `finmesh up`, which then
            # stops the services callers-first; a second signal racing their shutdown would kill them.
            process = subprocess.Popen(
                [sys.executable, "-m", f"finmesh.{name}.main"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        self.processes[name] = ServiceProcess(name, port, process, log_path, metrics_port, jwks_port)
        return self.processes[name]

    def restart(self, name: str) -> ServiceProcess:
        """Start a service that exited again, on its ports and data dir: callers, Prometheus and printed
        addresses still hold."""
        old = self.processes[name]
        return self.start_one(name, old.port, self.service_env, old.metrics_port, old.jwks_port)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            while not is_serving(proc.target):
                if proc.process.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}; see {proc.log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{proc.name} not SERVING after {timeout}s; see {proc.log_path}")
                time.sleep(0.1)

    def targets(self) -> dict[str, str]:
        return {name: proc.target for name, proc in self.processes.items()}

    def stop(self, timeout: float = 15.0) -> dict[str, int]:
        """SIGTERM every service (callers first) and wait; SIGKILL what does not exit. Returns exit codes."""
        for name in reversed(SERVICES):
            if name in self.processes and self.processes[name].process.poll() is None:
                self.processes[name].process.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.process.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                codes[name] = proc.process.wait()
        for process in self.fake_processes.values():
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return codes


def is_serving(target: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING

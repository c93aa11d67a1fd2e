"""Starts the four services as separate processes on loopback and stops them cleanly."""

from __future__ import annotations

import os
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

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Mesh:
    """The mesh as child processes. `database_urls` maps a service to a URL; others use SQLite in data_dir."""

    data_dir: Path
    base_port: int | None = None
    database_urls: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

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

    def start(self, timeout: float = 30.0) -> None:
        self.span_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = self.ports()
        targets = {f"FINMESH_{name.upper()}_TARGET": f"127.0.0.1:{port}" for name, port in ports.items()}
        for name in SERVICES:
            self.start_one(name, ports[name], targets)
        self.wait_ready(timeout)

    def start_one(self, name: str, port: int, targets: dict[str, str]) -> ServiceProcess:
        env = {
            **os.environ,
            **targets,
            "FINMESH_PORT": str(port),
            "FINMESH_DATA_DIR": str(self.data_dir),
            "FINMESH_SPAN_FILE": str(self.span_dir / f"{name}.jsonl"),
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            **self.extra_env,
        }
        if name in self.database_urls:
            env["FINMESH_DATABASE_URL"] = self.database_urls[name]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"finmesh.{name}.main"], env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        self.processes[name] = ServiceProcess(name, port, process, log_path)
        return self.processes[name]

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
        return codes


def is_serving(target: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING

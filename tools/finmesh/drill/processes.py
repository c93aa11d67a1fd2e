"""Service processes of one color on loopback, and what their SIGTERM drain looked like from outside."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finmesh.cli.mesh import free_port
from finmesh.drill.faulty import Faults


@dataclass
class ServiceProcess:
    """One running service process (e.g. payments "blue" version 1)."""

    service: str
    color: str
    version: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int = 0  # where it serves /metrics (FINMESH_METRICS_PORT)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.color}" if self.color != "local" else self.service

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def log_lines(self) -> list[dict[str, object]]:
        """The JSON log lines it wrote to stderr (anything else, e.g. a traceback, raises)."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


def start_service(
    service: str,
    *,
    color: str,
    version: str,
    env: dict[str, str],
    log_dir: Path,
    label: str = "",
    faults: Faults | None = None,
) -> ServiceProcess:
    """Start `finmesh.<service>.main` on a free loopback port with the given color, version and FINMESH_* env.

    With `faults`, the same service as a bad build (finmesh.drill.faulty). /metrics is served on
    FINMESH_METRICS_PORT from `env`, else on a free port chosen here (the process reports it only on stdout).
    """
    port = free_port()
    metrics_port = int(env.get("FINMESH_METRICS_PORT") or free_port())
    log_path = log_dir / f"{label or service + '-' + color}.log"
    full_env = {
        **os.environ,
        **env,
        "FINMESH_HOST": "127.0.0.1",
        "FINMESH_PORT": str(port),
        "FINMESH_DEPLOYMENT_COLOR": color,
        "FINMESH_SERVICE_VERSION": version,
        "FINMESH_METRICS_PORT": str(metrics_port),
    }
    command = [sys.executable, "-m", f"finmesh.{service}.main"]
    if faults is not None:
        command = [sys.executable, "-m", "finmesh.drill.faulty", service, *faults.argv()]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=log)
    return ServiceProcess(service, color, version, port, process, log_path, metrics_port)


async def health(channel: grpc.aio.Channel, timeout: float = 1.0) -> str:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def wait_serving(proc: ServiceProcess, timeout: float = 30.0) -> float:
    """Seconds until the process answers SERVING; raises if it exits or takes longer than `timeout`."""
    start = time.monotonic()
    async with grpc.aio.insecure_channel(proc.target) as channel:
        while await health(channel, timeout=0.5) != "SERVING":
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}; see {proc.log_path}")
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{proc.name} not SERVING after {timeout}s; see {proc.log_path}")
            await asyncio.sleep(0.1)
    return time.monotonic() - start


@dataclass
class DrainReport:
    """A SIGTERM as seen from outside: when health said NOT_SERVING, when the process exited, with what code."""

    name: str
    sigterm_ns: int  # wall clock, comparable with span timestamps
    not_serving_after: float | None  # seconds after SIGTERM; None: never observed
    refused_after: float | None  # seconds after SIGTERM until health stopped answering at all
    exited_after: float
    returncode: int

    def summary(self) -> str:
        def seconds(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f}s"

        return (
            f"{self.name}: NOT_SERVING after {seconds(self.not_serving_after)}, stopped answering after "
            f"{seconds(self.refused_after)}, exited {self.returncode} after {self.exited_after:.2f}s"
        )


async def terminate(proc: ServiceProcess, timeout: float = 30.0) -> DrainReport:
    """SIGTERM the process and watch its health directly (not through the forwarder) until it exits."""
    async with grpc.aio.insecure_channel(proc.target) as channel:
        # Connect first, so the first poll after SIGTERM is not a connection set-up.
        if await health(channel) != "SERVING":
            raise RuntimeError(f"{proc.name} was not SERVING before SIGTERM")
        sigterm_ns = time.time_ns()
        start = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        not_serving = refused = None
        while proc.process.poll() is None:
            if time.monotonic() - start > timeout:
                proc.process.kill()
                break
            if refused is None:
                status = await health(channel, timeout=0.5)
                elapsed = time.monotonic() - start
                if status == "NOT_SERVING" and not_serving is None:
                    not_serving = elapsed
                elif status not in ("SERVING", "NOT_SERVING"):
                    refused = elapsed
            await asyncio.sleep(0.02)
        exited = time.monotonic() - start
    return DrainReport(proc.name, sigterm_ns, not_serving, refused, exited, proc.process.wait())

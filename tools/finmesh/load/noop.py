"""The no-op baseline: a payment's hop topology with empty handlers, on the services' own server stack.

client ─▶ payments stand-in (CreatePayment) ─▶ risk stand-in (AssessPayment)

Each stand-in is a process run exactly as a service runs (finmesh.platform.runner:
logging, tracing with the JSONL span export, create_server with the guard that
opens server spans and checks tokens, drain on SIGTERM); only the handlers are
empty: risk approves at once, payments asks risk and answers without any database.
So a figure divided by this baseline's, measured in the same run, says how close
the real payment path gets to what Python gRPC does on this machine.

Auth is on, as in the services: the stand-ins verify a bearer JWT on every call
through the same Authorizer (the customer's token on CreatePayment, the payments
service token on AssessPayment). Their keys come from a throwaway Ed25519 key the
mesh generates (no identity process: the services, too, verify locally from cached
keys and fetch service tokens rarely, so neither adds a per-call hop).

    python -m finmesh.load.noop [--no-tracing] [--payments N] [--risk N]

prints one JSON line (the target, and a 0600 file holding a customer token) and
runs until SIGTERM or Ctrl-C. From Python: `async with NoopMesh(tracing=True) as mesh:`
then call `mesh.target` with `mesh.metadata()`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.auth.access import Authorizer
from finmesh.platform.auth.keys import KeyCache, PublishedKey, TokenVerifier
from finmesh.platform.auth.tokens import AUDIENCE, ISSUER, sign
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.channels import open_channel, remaining_timeout
from finmesh.platform.rpc.server import Registration
from finmesh.platform.runner import run_service
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc

KID = "noop-bench"
_PUBLIC_KEY_ENV = "FINMESH_NOOP_PUBLIC_KEY"  # base64 of the raw Ed25519 public key
_SERVICE_TOKEN_ENV = "FINMESH_NOOP_SERVICE_TOKEN"  # payments' service token for its calls to risk
_START_TIMEOUT = 30.0


# --- the stand-ins (child processes) ------------------------------------------------------------------


def _authorizer() -> Authorizer:
    raw = base64.b64decode(os.environ[_PUBLIC_KEY_ENV])
    key = PublishedKey(KID, Ed25519PublicKey.from_public_bytes(raw))

    async def fetch() -> list[PublishedKey]:
        return [key]

    return Authorizer(TokenVerifier(KeyCache(fetch, refresh_seconds=3600)))


class NoopRisk(risk_grpc.RiskServiceServicer):
    async def AssessPayment(self, request: risk_pb.AssessPaymentRequest, context: Any) -> Any:
        return risk_pb.AssessPaymentResponse(
            assessment=risk_pb.Assessment(payment_id=request.payment_id, decision=risk_pb.DECISION_APPROVE)
        )


class NoopPayments(pay_grpc.PaymentsServiceServicer):
    def __init__(self, risk: risk_grpc.RiskServiceAsyncStub, timeout: float) -> None:
        self._risk = risk
        self._timeout = timeout

    async def CreatePayment(self, request: pay_pb.CreatePaymentRequest, context: Any) -> Any:
        payment_id = str(uuid.uuid4())
        # The same request shape the real payments sends, so both hops carry comparable bytes.
        await self._risk.AssessPayment(
            risk_pb.AssessPaymentRequest(
                payment_id=payment_id,
                payer_account_id=request.payer_account_id,
                payee_account_id=request.payee_account_id,
                amount=request.amount,
            ),
            timeout=remaining_timeout(context, self._timeout),
        )
        return pay_pb.CreatePaymentResponse(
            payment=pay_pb.Payment(
                payment_id=payment_id,
                payer_account_id=request.payer_account_id,
                payee_account_id=request.payee_account_id,
                amount=request.amount,
                status=pay_pb.PAYMENT_STATUS_CAPTURED,
            )
        )


class _StaticToken:
    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str | None:
        return self._token


@dataclass
class _StandIn:
    registrations: list[Registration]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def _build_risk() -> _StandIn:
    risk = NoopRisk()  # type: ignore[abstract]  # answers one RPC; the generated base the rest, UNIMPLEMENTED
    return _StandIn(
        [
            Registration(
                risk,
                risk_grpc.add_RiskServiceServicer_to_server,
                risk_pb.DESCRIPTOR.services_by_name["RiskService"],
                _authorizer(),
            )
        ]
    )


async def _build_payments(settings: ServiceSettings) -> _StandIn:
    channel = open_channel(settings.risk_target, settings, token_source=_StaticToken(os.environ[_SERVICE_TOKEN_ENV]))
    servicer = NoopPayments(  # type: ignore[abstract]  # answers one RPC; the generated base the rest, UNIMPLEMENTED
        risk_grpc.RiskServiceStub(channel), settings.call_timeout_seconds
    )
    registration = Registration(
        servicer,
        pay_grpc.add_PaymentsServiceServicer_to_server,
        pay_pb.DESCRIPTOR.services_by_name["PaymentsService"],
        _authorizer(),
    )
    return _StandIn([registration], [channel])


def serve(role: str) -> None:
    """Run one stand-in until SIGTERM (FINMESH_* settings from the environment, as a service reads them)."""
    settings = ServiceSettings()
    if role == "risk":
        run_service("noop-risk", settings, _build_risk)
    else:
        run_service("noop-payments", settings, lambda: _build_payments(settings))


# --- the mesh (parent) --------------------------------------------------------------------------------


def mint(private_key: Ed25519PrivateKey, sub: str, roles: list[str], ttl: int = 6 * 3600) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "roles": sorted(roles),
        "tier": "low",
        "vrf": True,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return sign(claims, private_key, KID)


@dataclass
class StandInProcess:
    role: str
    process: subprocess.Popen[bytes]
    port: int = 0
    started_at: float = 0.0  # time.monotonic() at spawn
    serving_after: float = 0.0  # seconds from spawn to its "serving" line

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def multi_target(targets: list[str]) -> str:
    """One gRPC target naming several addresses (round robin needs the channel's lb policy set)."""
    return targets[0] if len(targets) == 1 else "ipv4:" + ",".join(targets)


@dataclass
class NoopMesh:
    """The no-op payment topology as child processes: `risk` risk stand-ins behind `payments` payments ones."""

    tracing: bool = True
    payments: int = 1
    risk: int = 1
    data_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[StandInProcess] = field(default_factory=list)
    _key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    customer_token: str = field(default="", repr=False)

    @property
    def payments_targets(self) -> list[str]:
        return [p.target for p in self.processes if p.role == "payments"]

    @property
    def target(self) -> str:
        return multi_target(self.payments_targets)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata of a payment: the customer's token and the load-test baggage mark."""
        return (("authorization", f"Bearer {self.customer_token}"), ("baggage", "synthetic=true"))

    def _env(self, role: str, risk_target: str = "") -> dict[str, str]:
        assert self.data_dir is not None
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        env = {
            **os.environ,
            "FINMESH_PORT": "0",
            "FINMESH_DATA_DIR": str(self.data_dir),
            "FINMESH_TRACING_ENABLED": "true" if self.tracing else "false",
            "FINMESH_SPAN_FILE": str(self.data_dir / "spans" / f"noop-{role}-{len(self.processes)}.jsonl"),
            "FINMESH_AUTH_MODE": "enforce",
            "FINMESH_DRAIN_DELAY_SECONDS": "0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # as `finmesh up` runs the services
            # One customer token carries all of a baseline's calls: its per-caller limit (200/s by default) would
            # be what is measured. Lifted, not off, so the limiter's bookkeeping still runs on every call.
            "FINMESH_RATE_LIMIT_PER_CALLER_RPS": "1000000",
            "FINMESH_RATE_LIMIT_PER_CALLER_BURST": "1000000",
            _PUBLIC_KEY_ENV: base64.b64encode(public).decode(),
            **self.extra_env,
        }
        if role == "payments":
            env["FINMESH_RISK_TARGET"] = risk_target
            env[_SERVICE_TOKEN_ENV] = mint(self._key, "service:payments", ["service"])
        return env

    def spawn(self, role: str, risk_target: str = "") -> StandInProcess:
        assert self.data_dir is not None
        log = (self.data_dir / f"noop-{role}-{len(self.processes)}.log").open("ab")
        with log:
            process = subprocess.Popen(
                [sys.executable, "-m", "finmesh.load.noop", "--serve", role],
                env=self._env(role, risk_target),
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        proc = StandInProcess(role, process, started_at=time.monotonic())
        self.processes.append(proc)
        return proc

    @staticmethod
    def wait_serving(proc: StandInProcess, timeout: float = _START_TIMEOUT) -> None:
        """Read the runner's {"service", "port"} line: it is printed once the server reports SERVING."""
        assert proc.process.stdout is not None
        line = proc.process.stdout.readline()  # the runner prints it right after create_server; EOF if it died
        if not line:
            code = proc.process.wait(timeout)
            raise RuntimeError(f"noop {proc.role} exited with {code} before serving")
        proc.port = int(json.loads(line)["port"])
        proc.serving_after = time.monotonic() - proc.started_at

    def start(self) -> NoopMesh:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="finmesh-noop-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.customer_token = mint(self._key, "noop-customer-" + uuid.uuid4().hex[:8], ["personal"])
        try:
            risks = [self.spawn("risk") for _ in range(self.risk)]
            for proc in risks:
                self.wait_serving(proc)
            risk_target = multi_target([p.target for p in risks])
            for proc in [self.spawn("payments", risk_target) for _ in range(self.payments)]:
                self.wait_serving(proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> dict[int, int]:
        """SIGTERM callers first, wait, SIGKILL what does not exit. Returns pid -> exit code."""
        for proc in sorted(self.processes, key=lambda p: p.role != "payments"):
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        codes = {}
        for proc in self.processes:
            try:
                codes[proc.process.pid] = proc.process.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                codes[proc.process.pid] = proc.process.wait()
            if proc.process.stdout is not None:
                proc.process.stdout.close()
        self.processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.data_dir = None
        return codes

    async def __aenter__(self) -> NoopMesh:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> NoopMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _announce(mesh: NoopMesh) -> None:
    assert mesh.data_dir is not None
    # The token goes to a private file, never to stdout or a log.
    token_file = mesh.data_dir / "noop-customer.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(mesh.customer_token)
    print(
        json.dumps(
            {
                "target": mesh.target,
                "token_file": str(token_file),
                "tracing": mesh.tracing,
                "pids": {f"{p.role}-{i}": p.process.pid for i, p in enumerate(mesh.processes)},
            }
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finmesh.load.noop", description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=["payments", "risk"], help=argparse.SUPPRESS)  # a stand-in process
    parser.add_argument("--no-tracing", action="store_true", help="run the stand-ins with tracing off")
    parser.add_argument("--payments", type=int, default=1, help="payments stand-in replicas")
    parser.add_argument("--risk", type=int, default=1, help="risk stand-in replicas")
    parser.add_argument("--data-dir", type=Path, help="where logs, spans and the token file go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    stop = [False]

    def on_signal(signum: int, frame: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with NoopMesh(tracing=not args.no_tracing, payments=args.payments, risk=args.risk, data_dir=args.data_dir) as mesh:
        _announce(mesh)
        while not stop[0] and all(p.process.poll() is None for p in mesh.processes):
            time.sleep(0.2)


if __name__ == "__main__":
    main()

"""`finmesh` command: up, demo, token, trace, health, outbox, rollout, audit, load."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
from yarl import URL

from finmesh.cli import audit, broker, token
from finmesh.cli.mesh import Mesh, load_fakes
from finmesh.cli.outbox_cmd import add_outbox_parser
from finmesh.cli.rollout import add_rollout_parser
from finmesh.cli.supervisor import RestartPolicy, Supervisor
from finmesh.cli.tls import TlsConfigError, health_status
from finmesh.cli.traces import latest_trace_id, load_spans, render_tree
from finmesh.load import cli as load_cli
from finmesh.slo import cli as slo_cli
from finmesh.slo.report_cli import add_report_parser

DEFAULT_BASE_PORT = 50051
NAMES = ("identity", "payments", "risk", "notify")
# `finmesh demo` leaves its trace id here so a bare `finmesh trace` shows that run.
LAST_TRACE_FILE = "last-demo-trace"


def _targets(base_port: int) -> dict[str, str]:
    return {name: f"127.0.0.1:{base_port + i}" for i, name in enumerate(NAMES)}


def broker_address(url: str) -> str:
    """host:port of an AMQP URL: never its credentials."""
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


def cmd_up(args: argparse.Namespace) -> int:
    mesh = Mesh(Path(args.data_dir), base_port=args.base_port or None)
    print(f"starting finmesh in {mesh.data_dir} (SQLite, spans and logs under it) ...", flush=True)
    if args.events == "rabbitmq":
        try:
            mesh.extra_env.update(broker.local_events_env(args.data_dir))
        except broker.BrokerAdminError as error:
            print(f"failed: no vhost for the mesh on RabbitMQ: {error}", file=sys.stderr)
            return 1
        print(
            f"events over RabbitMQ at {broker_address(broker.amqp_url())}, vhost {broker.local_vhost(args.data_dir)} "
            "(deleted at stop when no message waits in it)",
            flush=True,
        )
    try:
        mesh.start()
    except (RuntimeError, TimeoutError) as error:
        print(f"failed: {error}", file=sys.stderr)
        mesh.stop()
        return 1
    for name, target in mesh.targets().items():
        proc = mesh.processes[name]
        # Identity's JWKS goes last on its line: tests/e2e/finmesh_up.py reads the fields before it.
        jwks = f"   jwks: {proc.jwks_url}" if proc.jwks_url else ""
        print(
            f"  {name:<9} {target}   pid {proc.process.pid}   metrics: http://{proc.metrics_target}/metrics   "
            f"log: {proc.log_path}{jwks}"
        )
    for name, fake in mesh.fakes.items():
        print(f"  fake {name:<8} {fake.url}   (API key in {mesh.data_dir / 'fakes.json'})")
    print("auth is enforced: clients need tokens; `finmesh demo` onboards users and logs them in to get them.")
    print(
        "ready. Try `finmesh demo` in another terminal. A service that dies is restarted (kill one to watch); "
        "Ctrl-C stops the mesh.",
        flush=True,
    )
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    policy = RestartPolicy(restarts=args.restarts, first_delay=args.restart_delay)
    gave_up = Supervisor(mesh, policy).run(lambda: stop)
    if gave_up is not None:
        print(gave_up, file=sys.stderr, flush=True)
    codes = mesh.stop()
    print("stopped: " + ", ".join(f"{n}={c}" for n, c in codes.items()), flush=True)
    if args.events == "rabbitmq":
        print(broker.clean_local_vhost(args.data_dir), flush=True)
    return 0 if gave_up is None else 1


def cmd_demo(args: argparse.Namespace) -> int:
    import aiohttp

    from finmesh.cli.slice import run_slice
    from finmesh.platform.observability.telemetry import setup_tracing

    sms = load_fakes(Path(args.data_dir)).get("sms")
    if sms is None:
        print(
            f"no local fakes recorded in {args.data_dir}: start the mesh with `make run` (or `finmesh up`) "
            "so the demo can read one-time codes from the fake SMS provider",
            file=sys.stderr,
        )
        return 1
    provider = setup_tracing(
        "finmesh-cli", version="cli", color="local", span_file=str(Path(args.data_dir) / "spans" / "cli.jsonl")
    )
    try:
        result = asyncio.run(run_slice(_targets(args.base_port), sms))
    except (TimeoutError, OSError, aiohttp.ClientError) as error:
        print(f"demo failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as error:
        print(f"demo failed: {error.code().name}: {error.details()}", file=sys.stderr)
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            print("is the mesh running? Start it with `make run` (or `finmesh up`).", file=sys.stderr)
        return 1
    finally:
        provider.shutdown()
    print(
        f"registered, verified (identity number, SMS code, real name) and logged in (password + SMS code): "
        f"users {result.payer_user_id} and {result.payee_user_id}"
    )
    print(f"paid {result.paid_minor_units} CNY minor units: payment {result.payment_id}")
    print(f"payment receipts notify recorded for the payee: {result.payee_receipts}")
    print(f"trace id: {result.trace_id}  (render it with: finmesh trace)")
    (Path(args.data_dir) / LAST_TRACE_FILE).write_text(result.trace_id + "\n", encoding="utf-8")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    spans = load_spans(Path(args.data_dir) / "spans")
    last_demo = Path(args.data_dir) / LAST_TRACE_FILE
    trace_id = args.trace_id or (last_demo.read_text().strip() if last_demo.exists() else latest_trace_id(spans))
    if not trace_id:
        print("no spans recorded yet", file=sys.stderr)
        return 1
    print(render_tree(spans, trace_id))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    # TLS when FINMESH_TLS_* are set: the chart's mTLS test pods run this command.
    try:
        status = health_status(args.target, timeout=args.timeout, server_name=args.tls_server_name)
    except TlsConfigError as error:
        print(f"health: {error}", file=sys.stderr)
        return 2
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finmesh", description=__doc__)
    parser.add_argument("--data-dir", default=".finmesh", help="SQLite files, span files and logs (default .finmesh)")
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="identity listens here, payments +1, risk +2, notify +3 (`up`: 0 picks free ports)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the four services locally until Ctrl-C, restarting any that crashes")
    up.add_argument(
        "--restarts",
        type=int,
        default=RestartPolicy.restarts,
        help=f"fast crashes in a row (each within {RestartPolicy.stable_after:g} s of its start) "
        "restarted before giving up and stopping the mesh (default %(default)s; 0: stop at the "
        "first crash)",
    )
    up.add_argument(
        "--restart-delay",
        type=float,
        default=RestartPolicy.first_delay,
        help="seconds before the first restart; doubles with each fast crash in a row, up to "
        f"{RestartPolicy.max_delay:g} (default %(default)s)",
    )
    up.add_argument(
        "--events",
        choices=("grpc", "rabbitmq"),
        default="grpc",
        help="how events travel: grpc (each relay calls notify; no broker) or rabbitmq (the machine's RabbitMQ, "
        "FINMESH_RABBITMQ_URL or guest on 127.0.0.1:5672, in a vhost of this data dir's own)",
    )
    up.set_defaults(func=cmd_up)
    sub.add_parser("demo", help="run the thin slice against a running mesh").set_defaults(func=cmd_demo)
    trace = sub.add_parser("trace", help="render a trace from the local span files as a tree")
    trace.add_argument("trace_id", nargs="?", help="default: the last demo's trace, else the latest trace")
    trace.set_defaults(func=cmd_trace)
    health = sub.add_parser("health", help="gRPC health check of one service")
    health.add_argument("target", help="host:port")
    health.add_argument("--timeout", type=float, default=2.0)
    health.add_argument(
        "--tls-server-name",
        default="",
        help="name the server certificate must carry "
        "(default: the target's host), e.g. the Service name through a port-forward",
    )
    health.set_defaults(func=cmd_health)
    add_outbox_parser(sub)
    token.add_parser(sub)
    add_rollout_parser(sub)
    audit.add_parser(sub)
    load_cli.add_parser(sub)
    add_report_parser(slo_cli.add_parser(sub))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""`finmesh load`: drive a scenario against a target and write <out>/result.json and <out>/report.html.

Targets: `host:port` (payments; `--identity-target` for registrations, default the same address), `noop` (the
no-op baseline topology, started here), or `local` (a mesh of the four services started here on loopback with
its own test owner and funded test accounts). Every run is bounded by --duration or --count.

`finmesh load --compare a.json b.json` prints two runs' figures and their ratios (b ÷ a) instead of running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from finmesh.cli.tls import TlsConfigError
from finmesh.load import compare, machine, scenarios
from finmesh.load.accounts import AccountsFileError, TestAccounts, load_accounts
from finmesh.load.engine import LoadResult
from finmesh.load.progress import ProgressLine
from finmesh.load.run import Plan, result_document, run_load, summary, write_outputs
from finmesh.load.target import Endpoint, Targets, Tls, token_from_env

DEFAULT_TOKEN_ENV = "FINMESH_LOAD_TOKEN"
NOOP_ACCOUNTS = 8


class SetupError(Exception):
    """The run cannot start: a missing option, file, token, or a target that could not be started."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load",
        help="load-test a target: open or closed loop, HDR figures, JSON + HTML report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenario", default="payment", choices=[*scenarios.NAMES, "mix"])
    p.add_argument("--mix", default=Plan.mix, help="weights for --scenario mix (default %(default)s)")
    p.add_argument(
        "--mode",
        default="open",
        choices=["open", "closed"],
        help="open: constant rate, latency from each call's intended send time; closed: fixed concurrency",
    )
    p.add_argument("--rate", type=float, default=100.0, help="open loop: calls per second (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="closed loop: calls in flight (default %(default)s)")
    p.add_argument("--duration", type=float, help="measured seconds (default 10 unless --count is given)")
    p.add_argument("--count", type=int, help="measured calls (with --duration: whichever ends first)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds run but left out of the figures")
    p.add_argument("--max-in-flight", type=int, default=10_000, help="open loop: cap on outstanding calls")
    p.add_argument("--connections", type=int, default=1, help="HTTP/2 connections per target")
    p.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds")
    p.add_argument("--target", help="payments host:port (replicas: ipv4:host:port,host:port), `noop` or `local`")
    p.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A_JSON", "B_JSON"),
        help="run nothing: print two result.json files' throughput, p50/p90/p99 and errors, and b ÷ a",
    )
    p.add_argument(
        "--mesh-dir",
        type=Path,
        help="--target local: keep the mesh's databases, spans and logs here "
        "(default: a temporary directory, removed after the run)",
    )
    p.add_argument("--identity-target", help="identity host:port for registrations (default: --target)")
    p.add_argument("--tls-ca", help="CA file: TLS (default FINMESH_TLS_CA_FILE)")
    p.add_argument("--tls-cert", help="client certificate for mTLS (default FINMESH_TLS_CERT_FILE)")
    p.add_argument("--tls-key", help="client key for mTLS (default FINMESH_TLS_KEY_FILE)")
    p.add_argument("--tls-server-name", default="", help="name the server certificate must carry")
    p.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        help="environment variable holding the test owner's bearer token (default %(default)s)",
    )
    p.add_argument("--accounts-file", type=Path, help='JSON {"owner_id", "currency", "accounts": [...]}')
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run the payment path against the no-op baseline in this run and report ratios",
    )
    p.add_argument("--out", type=Path, default=Path("load-results"), help="directory for result.json, report.html")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.set_defaults(func=cmd_load)


def plan_from(args: argparse.Namespace) -> Plan:
    duration = args.duration if args.duration is not None else (None if args.count else 10.0)
    plan = Plan(
        scenario=args.scenario,
        mix=args.mix,
        mode=args.mode,
        rate=args.rate,
        concurrency=args.concurrency,
        duration_s=duration,
        count=args.count,
        warmup_s=args.warmup,
        max_in_flight=args.max_in_flight,
        connections=args.connections,
        timeout_s=args.timeout,
    )
    if plan.scenario == "mix":
        scenarios.parse_mix(plan.mix)  # refuse a bad mix before starting anything
    for name, value in (
        ("--rate", plan.rate),
        ("--concurrency", plan.concurrency),
        ("--timeout", plan.timeout_s),
        ("--duration", plan.duration_s or 1),
        ("--count", plan.count or 1),
    ):
        if value <= 0:
            raise SetupError(f"{name} must be positive")
    if plan.warmup_s < 0:
        raise SetupError("--warmup must not be negative")
    return plan


@contextlib.asynccontextmanager
async def _remote(args: argparse.Namespace, plan: Plan) -> AsyncIterator[Targets]:
    tls = Tls.from_options(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    token = token_from_env(args.token_env)
    used = scenarios.needs(plan.scenario, plan.mix)
    accounts = None
    if used & {"payment", "balance"}:
        if args.accounts_file is None:
            raise SetupError("payment and balance scenarios need the dedicated test accounts: --accounts-file")
        accounts = load_accounts(args.accounts_file)
        if not token:
            raise SetupError(
                f"no token in ${args.token_env}: the test owner's bearer token goes there (never on the command line)"
            )
    targets = Targets(args.target, accounts=accounts)
    if used & {"payment", "balance"}:
        targets.payments = Endpoint(args.target, tls, token)
    if "registration" in used:
        targets.identity = Endpoint(args.identity_target or args.target, tls, token)
    yield targets


@contextlib.asynccontextmanager
async def _noop(plan: Plan) -> AsyncIterator[Targets]:
    from finmesh.load.noop import NoopMesh

    if scenarios.needs(plan.scenario, plan.mix) != {"payment"}:
        raise SetupError("the no-op baseline serves CreatePayment only: use --scenario payment with --target noop")
    # As on the local mesh, one customer sends every call: its per-caller rate limit must not be what is measured.
    async with NoopMesh(tracing=True, extra_env={"FINMESH_RATE_LIMIT_PER_CALLER_RPS": "0"}) as mesh:
        # The stand-ins keep no accounts: any ids do, and no money exists to move.
        accounts = TestAccounts("noop", tuple(f"noop-account-{k}" for k in range(NOOP_ACCOUNTS)))
        yield Targets("noop", Endpoint(mesh.target, token=mesh.customer_token), accounts=accounts)


def _targets(args: argparse.Namespace, plan: Plan) -> contextlib.AbstractAsyncContextManager[Targets]:
    if args.target == "noop":
        return _noop(plan)
    if args.target == "local":
        from finmesh.load.localmesh import local_targets

        return local_targets(data_dir=args.mesh_dir, quiet=args.quiet)
    return _remote(args, plan)


async def _measure(args: argparse.Namespace, plan: Plan, label: str = "") -> tuple[str, LoadResult]:
    progress = None if args.quiet else ProgressLine(label=label)
    async with _targets(args, plan) as targets:
        for note in targets.notes:
            print(note, file=sys.stderr)
        try:
            result = await run_load(
                plan, payments=targets.payments, identity=targets.identity, accounts=targets.accounts, progress=progress
            )
        finally:
            if progress is not None:
                progress.done()
        return targets.description, result


async def _main(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    if not args.target:
        raise SetupError("--target is required (or --compare A_JSON B_JSON to compare two results)")
    started = time.time()
    facts = await asyncio.to_thread(machine.machine_facts)  # git runs in a subprocess
    description, result = await _measure(args, plan)
    baseline = None
    if args.baseline:
        baseline_args = argparse.Namespace(**{**vars(args), "target": "noop"})
        _, baseline = await _measure(baseline_args, replace(plan, scenario="payment"), label="baseline ")
    doc = result_document(plan, description, result, baseline, started_at=started, machine=machine.finish(facts))
    result_path, report_path = write_outputs(doc, args.out)
    print(summary(doc))
    print(f"wrote {result_path} and {report_path}")
    return 1 if doc["error_count"] else 0


def cmd_load(args: argparse.Namespace) -> int:
    """Exit 0: every measured call succeeded; 1: the run finished with errors (counted in the results);
    2: the run could not start. With --compare: 0, or 2 when a file cannot be read."""
    if args.compare:
        return _compare(*args.compare)
    try:
        return asyncio.run(_main(args))
    except (SetupError, AccountsFileError, TlsConfigError, ValueError, RuntimeError, TimeoutError) as error:
        print(f"load: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("load: interrupted; no results written", file=sys.stderr)
        return 130


def _compare(path_a: Path, path_b: Path) -> int:
    docs = []
    for path in (path_a, path_b):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            compare.figure(doc, "p50")  # a result document, not some other JSON
            docs.append(doc)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(
                f"load --compare: {path}: not a readable result.json ({type(error).__name__}: {error})", file=sys.stderr
            )
            return 2
    print(compare.render(docs[0], docs[1], str(path_a), str(path_b)))
    return 0

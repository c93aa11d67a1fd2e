"""`finmesh rollout <service> --to <version>`: blue-green rollout of one service with helm and kubectl.

The steps are docs/DEPLOY.md "Blue-green rollout of one service"; the commands
come from finmesh.rollout.plan, and --dry-run prints them without a cluster.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from finmesh.cli.tls import TlsConfigError, client_credentials
from finmesh.rollout.commands import CommandFailed, Runner
from finmesh.rollout.driver import Driver
from finmesh.rollout.plan import (
    COLORS,
    EXIT_REFUSED,
    SERVICES,
    Cluster,
    RolloutPlan,
    Windows,
    fullname,
    other_color,
)
from finmesh.rollout.probes import Prober, SyntheticPayment

_REPO = Path(__file__).resolve().parents[3]
# Pinned helm/kubectl that tools/helm_tools.sh installs; used when not on PATH.
_TOOLS_BIN = _REPO / ".tools" / "bin"
_DRY_RUN_REPLICAS = 2  # the chart's default, when --dry-run has no cluster to ask


class Refused(Exception):
    """The rollout cannot start: bad arguments or cluster state. Nothing was changed."""


def add_rollout_parser(sub: Any) -> None:
    p = sub.add_parser(
        "rollout",
        help="blue-green rollout of one service with helm and kubectl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--to", required=True, dest="version", help="image tag of the new version")
    p.add_argument("--release", default="finmesh")
    p.add_argument("--namespace", "-n", default="finmesh")
    p.add_argument("--chart", default="deploy/helm/finmesh", help="chart path or reference")
    p.add_argument(
        "--values",
        "-f",
        action="append",
        default=[],
        help="values file applied on every upgrade (repeatable), on top of --reuse-values",
    )
    p.add_argument("--kube-context", default="")
    p.add_argument("--replicas", type=int, help="size of the new color (default: the active color's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands; needs no cluster")
    p.add_argument(
        "--current-color",
        choices=COLORS,
        help="the active color (--dry-run only; otherwise read from `helm get values`)",
    )
    p.add_argument("--analysis-seconds", type=float, default=60.0)
    p.add_argument("--watch-seconds", type=float, default=120.0)
    p.add_argument(
        "--scale-down-delay",
        type=float,
        default=300.0,
        help="seconds the old color stays up after the flip (rollback target)",
    )
    p.add_argument("--probe-interval", type=float, default=1.0)
    p.add_argument("--max-error-rate", type=float, default=0.01, help="of probe calls per window (0..1)")
    p.add_argument("--ready-timeout", type=int, default=300, help="seconds for kubectl rollout status")
    p.add_argument("--helm-timeout", type=int, default=600, help="seconds per helm upgrade")
    p.add_argument("--synthetic-payer", default="", help="payments: test account that pays")
    p.add_argument("--synthetic-payee", default="", help="payments: test account that is paid")
    p.add_argument("--synthetic-amount", type=int, default=1, help="minor units per synthetic payment")
    p.add_argument("--synthetic-currency", default="CNY")
    p.add_argument(
        "--no-synthetic-payment",
        action="store_true",
        help="payments: probe with health calls only (no test accounts in this cluster)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("FINMESH_TOKEN", ""),
        help="payments: access token of the test accounts' owner, presented by the read and synthetic "
        "probes (auth is enforced). Prefer FINMESH_TOKEN: a command line shows in the process list",
    )
    p.set_defaults(func=cmd_rollout)


def _binary(name: str) -> str:
    """helm/kubectl: $FINMESH_<NAME> if set, else PATH, else the pinned one from tools/helm_tools.sh."""
    override = os.environ.get(f"FINMESH_{name.upper()}")
    if override:
        return override
    found = shutil.which(name)
    if found:
        return found
    pinned = _TOOLS_BIN / name
    if pinned.exists():
        return str(pinned)
    raise Refused(f"{name} not found on PATH; install it with tools/helm_tools.sh {name}")


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def _synthetic(args: argparse.Namespace) -> SyntheticPayment | None:
    if args.service != "payments" or args.no_synthetic_payment:
        return None
    if not (args.synthetic_payer and args.synthetic_payee):
        raise Refused(
            "payments needs --synthetic-payer and --synthetic-payee (dedicated test accounts) "
            "for the synthetic payment through the preview Service, or --no-synthetic-payment"
        )
    if args.synthetic_amount <= 0:
        raise Refused("--synthetic-amount must be positive")
    return SyntheticPayment(args.synthetic_payer, args.synthetic_payee, args.synthetic_amount, args.synthetic_currency)


def _cluster(args: argparse.Namespace, *, dry_run: bool) -> Cluster:
    return Cluster(
        release=args.release,
        namespace=args.namespace,
        chart=args.chart,
        values_files=tuple(args.values),
        kube_context=args.kube_context,
        helm="helm" if dry_run else _binary("helm"),
        kubectl="kubectl" if dry_run else _binary("kubectl"),
    )


def _windows(args: argparse.Namespace) -> Windows:
    return Windows(
        ready_timeout=args.ready_timeout,
        helm_timeout=args.helm_timeout,
        analysis=args.analysis_seconds,
        watch=args.watch_seconds,
        scale_down_delay=args.scale_down_delay,
        probe_interval=args.probe_interval,
    )


def _release_values(runner: Runner, cluster: Cluster) -> dict[str, Any]:
    argv = [
        cluster.helm,
        "get",
        "values",
        cluster.release,
        "--namespace",
        cluster.namespace,
        "--all",
        "--output",
        "json",
    ]
    if cluster.kube_context:
        argv += ["--kube-context", cluster.kube_context]
    try:
        values = runner.run_json(tuple(argv), timeout=60)
    except CommandFailed as error:
        raise Refused(f"cannot read the release's values: {error}") from error
    if not isinstance(values, dict):
        raise Refused(f"`helm get values` of {cluster.release} printed no values")
    return values


def _live_plan(args: argparse.Namespace, cluster: Cluster, runner: Runner) -> tuple[RolloutPlan, dict[str, Any]]:
    """The plan from the release's current values, refusing states a rollout must not start from."""
    values = _release_values(runner, cluster)
    svc = values.get("services", {}).get(args.service) or {}
    if not svc.get("enabled", False):
        raise Refused(f"{args.service} is not enabled in release {cluster.release}")
    active = svc.get("activeColor")
    if active not in COLORS:
        raise Refused(f"services.{args.service}.activeColor is {active!r}")
    new = other_color(active)
    if str(svc.get(active, {}).get("tag")) == args.version:
        raise Refused(f"{args.service} already runs {args.version} on {active}")
    if int(svc.get(new, {}).get("replicas", 0)):
        # A warm previous version or an unfinished rollout: deploying over it would
        # destroy the only way back.
        raise Refused(
            f"{new} still runs {svc[new]['replicas']} replicas of {args.service} "
            f"(a rollout in progress or not finished): finish or roll it back first"
        )
    replicas = args.replicas if args.replicas is not None else int(svc.get(active, {}).get("replicas", 0))
    if replicas < 1:
        raise Refused(f"new color size {replicas}: give --replicas >= 1")
    plan = RolloutPlan(
        cluster=cluster,
        service=args.service,
        version=args.version,
        from_color=active,
        replicas=replicas,
        fullname=fullname(cluster.release, values),
        grpc_port=int(values.get("grpc", {}).get("port", 50051)),
        windows=_windows(args),
    )
    return plan, values


def _print_dry_run(plan: RolloutPlan, args: argparse.Namespace, synthetic: SyntheticPayment | None) -> None:
    print(f"# finmesh rollout {plan.service} --to {plan.version}: {plan.from_color} (active) -> {plan.to_color}")
    if args.replicas is None:
        print(f"# --replicas not given: assuming {plan.replicas} (a live run copies the active color's)")
    if synthetic is not None:
        print(
            f"# synthetic payment at the start and end of each window: {synthetic.amount} {synthetic.currency} "
            f"minor units {synthetic.payer_account_id} -> {synthetic.payee_account_id}, read back by id"
        )
    for number, step in enumerate(plan.steps(), start=1):
        print(f"# {number}. {step.title}")
        if step.note:
            print(f"#    {step.note}")
        for argv in step.commands:
            print(shlex.join(argv))
    rollback = plan.rollback_step()
    print(f"# {rollback.title}")
    for argv in rollback.commands:
        print(shlex.join(argv))


def cmd_rollout(args: argparse.Namespace) -> int:
    try:
        return _rollout(args)
    except Refused as reason:
        print(f"rollout refused: {reason}", file=sys.stderr)
        return EXIT_REFUSED


def _rollout(args: argparse.Namespace) -> int:
    synthetic = _synthetic(args)
    if not 0 <= args.max_error_rate <= 1:
        raise Refused("--max-error-rate is a fraction between 0 and 1")
    if args.dry_run:
        if args.current_color is None:
            raise Refused("--dry-run needs --current-color (it does not ask the cluster)")
        cluster = _cluster(args, dry_run=True)
        plan = RolloutPlan(
            cluster=cluster,
            service=args.service,
            version=args.version,
            from_color=args.current_color,
            replicas=args.replicas or _DRY_RUN_REPLICAS,
            fullname=fullname(args.release),
            windows=_windows(args),
        )
        _print_dry_run(plan, args, synthetic)
        return 0
    if args.current_color is not None:
        raise Refused("--current-color is for --dry-run; a live rollout reads the active color from helm")
    if synthetic is not None and not args.token:
        raise Refused(
            "payments' probes need the test accounts' owner's access token (FINMESH_TOKEN or --token): "
            "auth is enforced, a probe without one is refused UNAUTHENTICATED"
        )
    cluster = _cluster(args, dry_run=False)
    runner = Runner(_log)
    plan, values = _live_plan(args, cluster, runner)
    try:
        mtls = client_credentials() is not None
    except TlsConfigError as error:
        raise Refused(str(error)) from error
    if values.get("mtls", {}).get("enabled") and not mtls:
        raise Refused(
            "the release has mTLS on: set FINMESH_TLS_CERT_FILE, FINMESH_TLS_KEY_FILE and "
            "FINMESH_TLS_CA_FILE so the probes can present a client certificate"
        )

    def prober(target: str, server_name: str) -> Prober:
        return Prober(plan.service, target, server_name=server_name, synthetic=synthetic, token=args.token)

    driver = Driver(plan, runner, prober, _log, max_error_rate=args.max_error_rate)
    return driver.run()

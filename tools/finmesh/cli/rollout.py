"""`finmesh rollout start|status|promote|pause|resume|abort|undo|history|run <service>`: progressive delivery.

Blue-green or canary rollouts of one service with helm and kubectl, in Argo
Rollouts' words, resumable: the rollout's record lives in the cluster (a
ConfigMap), so any operator sees and continues a rollout another started.
docs/DEPLOY.md "Progressive delivery with `finmesh rollout`" is the runbook.
Every verb takes -o json and --dry-run (prints the helm/kubectl calls).

Exit codes: 0 done (a driving verb: the candidate is promoted); 1 the rollout
was aborted by a failed analysis or step (traffic back on stable); 2 refused,
nothing changed; 3 a command failed and so did the way back: read the record;
4 stopped unfinished: paused (promote/resume) or another process drives it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from finmesh.cli.tls import TlsConfigError, client_credentials
from finmesh.rollout.analysis import PrometheusAnalyzer
from finmesh.rollout.commands import CommandFailed, Runner
from finmesh.rollout.controller import BackendFailed, Controller, Gates, Refused
from finmesh.rollout.gates import GATES, check_gates, resolves, versions_from_git
from finmesh.rollout.kube import KubeAnalyzer, KubeBackend
from finmesh.rollout.model import STRATEGIES, Analyzer, Step, Thresholds
from finmesh.rollout.plan import (
    COLORS,
    EXIT_NEEDS_HUMAN,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_ROLLED_BACK,
    EXIT_WAITING,
    SERVICES,
    Cluster,
    Windows,
    other_color,
)
from finmesh.rollout.probes import Prober, SyntheticPayment
from finmesh.rollout.record import (
    InvalidRecord,
    Record,
    bounded,
    default_actor,
    step_from_json,
    summary,
    thresholds_from_values,
)

_REPO = Path(__file__).resolve().parents[3]
# Pinned helm/kubectl that tools/helm_tools.sh installs; used when not on PATH.
_TOOLS_BIN = _REPO / ".tools" / "bin"
_DRY_RUN_REPLICAS = 2  # the chart's default, when --dry-run has no cluster to ask
VERBS = ("start", "status", "promote", "pause", "resume", "abort", "undo", "history", "run")
_DRIVING = ("start", "promote", "resume", "run")


def add_rollout_parser(sub: Any) -> None:
    p = sub.add_parser(
        "rollout",
        help="progressive delivery of one service (blue-green, canary) with helm and kubectl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = _common()
    helps = {
        "start": "deploy a version on the other color and drive the steps",
        "status": "the rollout's state (also scales the old color down once its delay is over)",
        "promote": "go past the current pause; --full: skip every step left",
        "pause": "hold the rollout where it is",
        "resume": "lift a pause and drive on",
        "abort": "traffic back on the stable color at once, candidate down",
        "undo": "after promotion, while the old color is warm: make it active again",
        "history": "who did what, when and why",
        "run": "drive the rollout from where it stands (after a crash, or to finish the scale-down)",
    }
    for verb in VERBS:
        v = verbs.add_parser(verb, parents=[common], help=helps[verb], description=helps[verb])
        v.add_argument("service", choices=SERVICES)
        if verb == "start":
            v.add_argument("--to", required=True, dest="version", help="image tag of the new version")
            v.add_argument("--strategy", choices=STRATEGIES, help="default: services.<svc>.rollout.strategy")
            v.add_argument(
                "--steps",
                help='JSON list in the values\' form, e.g. \'[{"setWeight":10},{"analysis":{"seconds":60}}]\'',
            )
            v.add_argument("--replicas", type=int, help="size of the candidate (default: the stable color's)")
            v.add_argument("--scale-down-delay", type=float, help="seconds the old color stays warm after promotion")
            v.add_argument("--current-color", choices=COLORS, help="the active color (--dry-run only)")
            g = v.add_argument_group("promotion gates (checked before the candidate takes all traffic)")
            g.add_argument(
                "--stable-ref", default="", help="git ref of the stable version's source (contracts, migrations)"
            )
            g.add_argument("--candidate-ref", default="", help="git ref of the candidate's source")
            g.add_argument(
                "--skip-gate", action="append", default=[], choices=GATES, help="pass over a gate (needs --reason)"
            )
        if verb == "promote":
            v.add_argument("--full", action="store_true", help="skip every remaining step and analysis")
        if verb in _DRIVING:
            v.add_argument("--take-over", action="store_true", help="drive even if another process holds the lease")
        if verb == "run":
            v.add_argument(
                "--wait-scale-down", action="store_true", help="wait out scaleDownDelay here instead of returning"
            )
        v.set_defaults(func=cmd_rollout)


def _common() -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--release", default="finmesh")
    c.add_argument("--namespace", "-n", default="finmesh")
    c.add_argument("--chart", default="deploy/helm/finmesh", help="chart path or reference")
    c.add_argument("--values", "-f", action="append", default=[], help="values file applied on every upgrade")
    c.add_argument("--kube-context", default="")
    c.add_argument("--source", default=".", help="the git repository the gates read --stable-ref/--candidate-ref from")
    c.add_argument("--output", "-o", choices=("text", "json"), default="text")
    c.add_argument("--dry-run", action="store_true", help="print the helm/kubectl calls; change nothing")
    c.add_argument("--actor", default="", help="who acts (default: $FINMESH_ACTOR, else user@host)")
    c.add_argument("--reason", default="", help="why, kept in the history (at most 200 characters)")
    c.add_argument("--ready-timeout", type=int, default=300, help="seconds for kubectl rollout status")
    c.add_argument("--helm-timeout", type=int, default=600, help="seconds per helm upgrade")
    a = c.add_argument_group("analysis (defaults: the release's rollouts.analysis values)")
    a.add_argument("--prometheus", default=None, help="Prometheus URL (rollouts.analysis.prometheusAddress)")
    a.add_argument("--max-error-rate", type=float, help="of the candidate's calls, and of the probe calls (0..1)")
    a.add_argument("--max-error-rate-increase", type=float)
    a.add_argument("--max-latency-p99-ratio", type=float)
    a.add_argument("--latency-slack-seconds", type=float)
    a.add_argument("--min-call-rate", type=float)
    a.add_argument("--window", help="PromQL range of each measurement, e.g. 1m")
    a.add_argument("--interval-seconds", type=float, help="between measurements")
    a.add_argument("--failure-limit", type=int)
    a.add_argument("--inconclusive-limit", type=int)
    a.add_argument("--probe-interval", type=float, default=1.0)
    a.add_argument("--synthetic-payer", default="", help="payments: test account that pays")
    a.add_argument("--synthetic-payee", default="", help="payments: test account that is paid")
    a.add_argument("--synthetic-amount", type=int, default=1, help="minor units per synthetic payment")
    a.add_argument("--synthetic-currency", default="CNY")
    a.add_argument("--no-synthetic-payment", action="store_true", help="payments: probe with health calls only")
    a.add_argument(
        "--token",
        default=os.environ.get("FINMESH_TOKEN", ""),
        help="payments: access token of the test accounts' owner (prefer FINMESH_TOKEN)",
    )
    return c


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
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _synthetic(args: argparse.Namespace, driving: bool) -> SyntheticPayment | None:
    if args.service != "payments" or args.no_synthetic_payment or not driving:
        return None
    if not (args.synthetic_payer and args.synthetic_payee):
        raise Refused(
            "payments needs --synthetic-payer and --synthetic-payee (dedicated test accounts) "
            "for the synthetic payment of each analysis, or --no-synthetic-payment"
        )
    if args.synthetic_amount <= 0:
        raise Refused("--synthetic-amount must be positive")
    return SyntheticPayment(args.synthetic_payer, args.synthetic_payee, args.synthetic_amount, args.synthetic_currency)


def _thresholds(args: argparse.Namespace, values: dict[str, Any]) -> Thresholds:
    if args.max_error_rate is not None and not 0 <= args.max_error_rate <= 1:
        raise Refused("--max-error-rate is a fraction between 0 and 1")
    return thresholds_from_values(
        (values.get("rollouts") or {}).get("analysis"),
        max_error_rate=args.max_error_rate,
        max_error_rate_increase=args.max_error_rate_increase,
        max_latency_p99_ratio=args.max_latency_p99_ratio,
        latency_slack_seconds=args.latency_slack_seconds,
        min_call_rate=args.min_call_rate,
        window=args.window,
        interval_seconds=args.interval_seconds,
        failure_limit=args.failure_limit,
        inconclusive_limit=args.inconclusive_limit,
    )


def _prometheus_url(args: argparse.Namespace, values: dict[str, Any]) -> str:
    if args.prometheus is not None:
        return str(args.prometheus)
    return str(((values.get("rollouts") or {}).get("analysis") or {}).get("prometheusAddress") or "")


def _metrics(url: str, thresholds: Thresholds) -> tuple[Analyzer | None, str]:
    """The Prometheus analyzer, or None and why (the record says so: the analysis is then probes only)."""
    if not url:
        return None, "probes only: no Prometheus address (--prometheus or rollouts.analysis.prometheusAddress)"
    return PrometheusAnalyzer(url, thresholds), f"metric analysis against {url} and probes"


def _gate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What `start` keeps in the record for the gates; refused now if a gate could never look."""
    skip = sorted(set(args.skip_gate))
    if skip and not args.reason:
        raise Refused("--skip-gate needs --reason: the record shows who passed over which gate and why")
    refs = {"stableRef": args.stable_ref, "candidateRef": args.candidate_ref}
    if not {"contracts", "migrations"} <= set(skip):
        if not (args.stable_ref and args.candidate_ref):
            raise Refused(
                "the contracts and migrations gates compare the two versions' sources: give --stable-ref and "
                "--candidate-ref (git refs in --source), or --skip-gate with a --reason"
            )
        for ref in refs.values():
            if not resolves(Path(args.source), ref):
                raise Refused(f"{ref!r} is no commit in {args.source} (--source)")
    return {**refs, "skip": skip}


def _gates(args: argparse.Namespace, url: str) -> Gates:
    def check(rec: Record) -> list[str]:
        settings = rec.gates
        with contextlib.ExitStack() as stack:
            versions = None
            if settings.get("stableRef") and settings.get("candidateRef"):
                versions = stack.enter_context(
                    versions_from_git(Path(args.source), settings["stableRef"], settings["candidateRef"])
                )
            results = check_gates(
                rec.service,
                rec.candidate_color,
                versions=versions,
                prometheus_url=url or None,
                skip=settings.get("skip", ()),
            )
        for result in results:
            _log(f"gate {result.line()}")
        return [r.line() for r in results if not r.passed]

    return check


def _steps(text: str | None) -> list[Step] | None:
    if text is None:
        return None
    try:
        doc = json.loads(text)
        if not isinstance(doc, list):
            raise InvalidRecord("--steps is a JSON list")
        return [step_from_json(s) for s in doc]
    except (json.JSONDecodeError, InvalidRecord) as error:
        raise Refused(f"--steps: {error}") from error


def _offline_values(args: argparse.Namespace) -> dict[str, Any]:
    """--dry-run of `start` without a cluster: the release as --current-color says it is."""
    if args.verb != "start" or args.current_color is None:
        raise Refused(
            "--dry-run without a cluster needs `start --current-color`; other verbs read the live record "
            "(give them a cluster: their --dry-run reads, and prints the writes)"
        )
    active = args.current_color
    size = args.replicas or _DRY_RUN_REPLICAS
    svc = {"enabled": True, "activeColor": active, active: {"replicas": size}, other_color(active): {"replicas": 0}}
    return {"services": {args.service: svc}}


def cmd_rollout(args: argparse.Namespace) -> int:
    try:
        return _rollout(args)
    except Refused as reason:
        print(f"rollout {args.verb} refused: {reason}", file=sys.stderr)
        return EXIT_REFUSED
    except BackendFailed as error:
        print(f"rollout {args.verb}: NEEDS A HUMAN: {error}", file=sys.stderr)
        return EXIT_NEEDS_HUMAN
    except CommandFailed as error:
        print(f"rollout {args.verb}: {error}", file=sys.stderr)
        return EXIT_NEEDS_HUMAN if args.verb in (*_DRIVING, "abort", "undo") else EXIT_REFUSED


def _rollout(args: argparse.Namespace) -> int:
    driving = args.verb in _DRIVING
    if getattr(args, "current_color", None) is not None and not args.dry_run:
        raise Refused("--current-color is for --dry-run; a live rollout reads the active color from helm")
    synthetic = _synthetic(args, driving)
    offline = args.dry_run and getattr(args, "current_color", None) is not None
    cluster = Cluster(
        release=args.release,
        namespace=args.namespace,
        chart=args.chart,
        values_files=tuple(args.values),
        kube_context=args.kube_context,
        helm="helm" if offline else _binary("helm"),
        kubectl="kubectl" if offline else _binary("kubectl"),
    )
    windows = Windows(
        ready_timeout=args.ready_timeout, helm_timeout=args.helm_timeout, probe_interval=args.probe_interval
    )
    runner = None if offline else Runner(_log)
    out = print if args.dry_run else None
    backend = KubeBackend(cluster, runner, windows, values=_offline_values(args) if offline else None, out=out)
    try:
        values = backend.values()
    except CommandFailed as error:
        raise Refused(f"cannot read the release's values: {error}") from error
    if args.verb == "start":
        _refuse_start(args, values, synthetic)
    thresholds = _thresholds(args, values)
    url = _prometheus_url(args, values)
    metrics, note = _metrics(url, thresholds) if driving else (None, "")
    clock, sleep = _clocks(args.dry_run)

    def prober(target: str, server_name: str) -> Prober:
        return Prober(args.service, target, server_name=server_name, synthetic=synthetic, token=args.token)

    analyzer = KubeAnalyzer(
        backend, runner, prober, metrics=metrics, max_error_rate=thresholds.max_error_rate, clock=clock, sleep=sleep
    )
    log = (lambda line: print(f"# {line}")) if args.dry_run else _log
    controller = Controller(
        backend,
        analyzer,
        actor=default_actor(args.actor),
        log=log,
        clock=clock,
        sleep=sleep,
        values=values,
        analysis_note=note,
        # A dry run's clock jumps: one slice per wait, rather than a re-read every 2 s of a simulated 300 s.
        poll_seconds=1e9 if args.dry_run else 2.0,
        gates=None if args.dry_run else _gates(args, url),
    )
    rec = _verb(controller, args)
    if args.verb == "history":
        return _print_history(args, rec)
    _print_record(args, rec, clock())
    if not driving:
        return EXIT_OK
    if rec.phase in ("Degraded", "RolledBack"):
        return EXIT_ROLLED_BACK
    if rec.promoted or rec.phase == "Healthy":
        return EXIT_OK
    return EXIT_WAITING


def _clocks(dry_run: bool) -> tuple[Any, Any]:
    if not dry_run:
        return time.time, time.sleep
    now = [time.time()]  # a dry run waits for nothing: its clock jumps

    def sleep(seconds: float) -> None:
        now[0] += max(seconds, 0.0)

    return (lambda: now[0]), sleep


def _verb(c: Controller, args: argparse.Namespace) -> Record:
    s, reason = args.service, bounded(args.reason)
    if args.verb == "start":
        if args.dry_run:
            print(f"# finmesh rollout start {s} --to {args.version} (dry run: helm/kubectl calls that would run)")
        rec = c.start(
            s,
            args.version,
            strategy=args.strategy,
            steps=_steps(args.steps),
            replicas=args.replicas,
            reason=reason,
            scale_down_delay=args.scale_down_delay,
            run=False,
            gates={} if args.dry_run else _gate_settings(args),
        )
        return c.run(rec.service, take_over=args.take_over, wait_scale_down=args.dry_run)
    if args.verb == "run":
        return c.run(s, take_over=args.take_over, wait_scale_down=args.wait_scale_down or args.dry_run)
    if args.verb == "promote":
        rec = c.promote(s, full=args.full, reason=reason, run=False)
        return _drive(c, rec, args)
    if args.verb == "resume":
        rec = c.resume(s, reason=reason, run=False)
        return _drive(c, rec, args)
    if args.verb == "pause":
        return c.pause(s, reason=reason)
    if args.verb == "abort":
        return c.abort(s, reason=reason)
    if args.verb == "undo":
        return c.undo(s, reason=reason)
    if args.verb == "status":
        return c.status(s) if not args.dry_run else c.record(s)
    return c.record(s)  # history


def _drive(c: Controller, rec: Record, args: argparse.Namespace) -> Record:
    """After promote/resume: drive on here, unless another live process drives it (it picks the change up)."""
    if rec.done and not (rec.promoted and not rec.scaled_down):
        return rec
    if rec.paused:
        return rec
    lease = rec.lease
    if lease is not None and lease.fresh(c.clock()) and not args.take_over:
        c.log(f"{rec.service}: {lease.actor} (pid {lease.pid} on {lease.host}) drives it and carries on")
        return rec
    return c.run(rec.service, take_over=args.take_over)


def _refuse_start(args: argparse.Namespace, values: dict[str, Any], synthetic: SyntheticPayment | None) -> None:
    svc = (values.get("services") or {}).get(args.service) or {}
    if not svc.get("enabled", False):
        raise Refused(f"{args.service} is not enabled in release {args.release}")
    if svc.get("activeColor") not in COLORS:
        raise Refused(f"services.{args.service}.activeColor is {svc.get('activeColor')!r}")
    if args.dry_run:
        return
    if synthetic is not None and not args.token:
        raise Refused(
            "payments' probes need the test accounts' owner's access token (FINMESH_TOKEN or --token): "
            "auth is enforced, a probe without one is refused UNAUTHENTICATED"
        )
    try:
        mtls = client_credentials() is not None
    except TlsConfigError as error:
        raise Refused(str(error)) from error
    if (values.get("mtls") or {}).get("enabled") and not mtls:
        raise Refused(
            "the release has mTLS on: set FINMESH_TLS_CERT_FILE, FINMESH_TLS_KEY_FILE and "
            "FINMESH_TLS_CA_FILE so the probes can present a client certificate"
        )


def _print_record(args: argparse.Namespace, rec: Record, now: float) -> None:
    if args.output == "json":
        print(json.dumps(rec.to_json(), indent=2))
    elif not args.dry_run or args.verb != "start":
        print("\n".join(summary(rec, now)))


def _print_history(args: argparse.Namespace, rec: Record) -> int:
    if args.output == "json":
        print(json.dumps({"service": rec.service, "history": [e.to_json() for e in rec.history]}, indent=2))
        return EXIT_OK
    for e in rec.history:
        why = f"  ({e.reason})" if e.reason else ""
        print(f"{e.time}  {e.actor:<24} {e.verb:<14} {e.detail}{why}")
    return EXIT_OK

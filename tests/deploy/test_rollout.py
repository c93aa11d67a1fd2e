"""`finmesh rollout`: its dry run, its decisions against fake helm/kubectl, and its commands against the real ones.

The fakes are executables on PATH that speak the real CLIs' argv and JSON
(`helm get values --all -o json`, `kubectl get pods -o json`, port-forward's
"Forwarding from" line); the gRPC probes reach a real health server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.rollout.plan import Cluster, RolloutPlan, fullname, judge_pods, parse_pods
from tests.inprocess import running_mesh

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "finmesh"
VALUES_DIR = Path(__file__).resolve().parent / "values"

# The fake helm and kubectl: one script, told apart by the name it is called as.
FAKE_CLI = r'''
import json, os, sys, time

tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["FAKE_KUBE_LOG"], "a") as log:
    log.write(json.dumps([tool, *args]) + "\n")
with open(os.environ["FAKE_KUBE_SCENARIO"]) as f:
    scenario = json.load(f)


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def take(counter):
    """How many times this counter was taken before (state survives across invocations)."""
    path = os.environ["FAKE_KUBE_LOG"] + "." + counter
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    return n


def option(name):
    return args[args.index(name) + 1] if name in args else None


if tool == "helm":
    if args[:2] == ["get", "values"]:
        if "--all" not in args or option("--output") != "json":
            fail("fake helm: get values without --all --output json")
        print(json.dumps(scenario["values"]))
    elif args[0] == "upgrade":
        if take("upgrade") in scenario.get("failing_upgrades", []):
            fail('Error: UPGRADE FAILED: context deadline exceeded')
        print('Release "%s" has been upgraded. Happy Helming!' % args[1])
    else:
        fail('Error: unknown command "%s" for "helm"' % args[0])
else:
    if args[:1] != ["--namespace"]:
        fail("fake kubectl: expected --namespace first")
    rest = args[2:]
    if rest[:2] == ["rollout", "status"]:
        if scenario.get("never_ready"):
            fail("error: timed out waiting for the condition")
        print('deployment "%s" successfully rolled out' % rest[2].split("/", 1)[1])
    elif rest[:2] == ["get", "pods"]:
        labels = dict(kv.split("=", 1) for kv in option("--selector").split(","))
        color = labels["finmesh.io/color"]
        answers = scenario["pods"][color]
        items = answers[min(take("pods-" + color), len(answers) - 1)]
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    elif rest[0] == "port-forward":
        service = rest[1].split("/", 1)[1]
        if service not in scenario["forward"]:
            fail('Error from server (NotFound): services "%s" not found' % service)
        print("Forwarding from 127.0.0.1:%d -> %s" % (scenario["forward"][service], rest[2][1:]), flush=True)
        time.sleep(600)
    else:
        fail('error: unknown command "%s" for "kubectl"' % rest[0])
'''


def pod(name: str, *, uid: str = "", restarts: int = 0, ready: bool = True, waiting: str = "") -> dict[str, Any]:
    """One pod as `kubectl get pods -o json` prints it (the fields the rollout reads, and their neighbours)."""
    running = {"running": {"startedAt": "2025-06-01T00:00:00Z"}}
    state: dict[str, Any] = {"waiting": {"reason": waiting}} if waiting else running
    last = {"terminated": {"reason": "Error", "exitCode": 1}} if restarts else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "uid": uid or f"uid-{name}",
            "namespace": "finmesh",
            "labels": {"app.kubernetes.io/name": "risk", "finmesh.io/color": "green"},
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"},
                {"type": "ContainersReady", "status": "True" if ready else "False"},
            ],
            "containerStatuses": [
                {"name": "server", "ready": ready, "restartCount": restarts, "state": state, "lastState": last}
            ],
        },
    }


HEALTHY = [pod("fm-finmesh-risk-green-a"), pod("fm-finmesh-risk-green-b")]


def release_values(
    active: str = "blue", inactive_replicas: int = 0, mtls: bool = False, service: str = "risk"
) -> dict[str, Any]:
    """What `helm get values --all -o json` prints for the release (the part the rollout reads)."""
    other = "green" if active == "blue" else "blue"
    return {
        "fullnameOverride": "",
        "nameOverride": "",
        "grpc": {"port": 50051},
        "mtls": {"enabled": mtls},
        "services": {
            service: {
                "enabled": True,
                "activeColor": active,
                "preview": {"enabled": False},
                active: {"tag": "0.1.0", "replicas": 2},
                other: {"tag": "0.1.0", "replicas": inactive_replicas},
            }
        },
    }


@pytest.fixture(scope="module")
def health_servers() -> Iterator[dict[str, int]]:
    """Real gRPC health servers: "good" serves risk, "sick" reports the risk service NOT_SERVING."""
    servers, ports = [], {}
    for name, status in (
        ("good", health_pb2.HealthCheckResponse.SERVING),
        ("sick", health_pb2.HealthCheckResponse.NOT_SERVING),
    ):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servicer.set("finmesh.risk.v1.RiskService", status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
    yield ports
    for server in servers:
        server.stop(0)


class FakeCluster:
    """A tmp dir with the fake helm and kubectl, a scenario file and the log of every call."""

    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        script = f"#!{sys.executable}\n{FAKE_CLI}"
        for tool in ("helm", "kubectl"):
            path = self.bin / tool
            path.write_text(script)
            path.chmod(0o755)
        self.scenario = tmp / "scenario.json"
        self.log = tmp / "calls.jsonl"

    def prepare(self, scenario: dict[str, Any], service: str, *extra: str) -> tuple[list[str], dict[str, str]]:
        """The rollout's argv (short windows) and an environment whose PATH finds the fakes first."""
        self.scenario.write_text(json.dumps(scenario))
        env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBE_SCENARIO": str(self.scenario),
            "FAKE_KUBE_LOG": str(self.log),
        }
        for name in (
            "FINMESH_HELM",
            "FINMESH_KUBECTL",
            "FINMESH_TLS_CERT_FILE",
            "FINMESH_TLS_KEY_FILE",
            "FINMESH_TLS_CA_FILE",
        ):
            env.pop(name, None)
        argv = [
            sys.executable,
            "-m",
            "finmesh.cli.main",
            "rollout",
            service,
            "--to",
            "0.2.0",
            "--release",
            "fm",
            "--chart",
            str(CHART),
            "--analysis-seconds",
            "0.6",
            "--watch-seconds",
            "0.6",
            "--probe-interval",
            "0.1",
            "--scale-down-delay",
            "0",
            *extra,
        ]
        return argv, env

    def rollout(self, scenario: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.prepare(scenario, "risk", *extra)
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90, check=False)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def upgrades(self) -> list[list[str]]:
        return [c for c in self.calls() if c[:2] == ["helm", "upgrade"]]


@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    return FakeCluster(tmp_path)


def _sets(argv: list[str]) -> dict[str, str]:
    """path -> value of every --set / --set-string in a helm argv."""
    return {
        argv[i + 1].split("=", 1)[0]: argv[i + 1].split("=", 1)[1]
        for i, flag in enumerate(argv)
        if flag in ("--set", "--set-string")
    }


def _shape(call: list[str]) -> str:
    """A call reduced to what tells the steps apart."""
    if call[:2] == ["helm", "upgrade"]:
        s = _sets(call)
        return (
            f"upgrade active={s['services.risk.activeColor']} preview={s['services.risk.preview.enabled']}"
            f" green={s['services.risk.green.replicas']} blue={s.get('services.risk.blue.replicas', '-')}"
        )
    if call[0] == "helm":
        return " ".join(call[1:3])
    return " ".join(call[3:5])  # kubectl --namespace <ns> <verb> <object>


def _scenario(health_servers: dict[str, int], **overrides: Any) -> dict[str, Any]:
    scenario = {
        "values": release_values(),
        "pods": {"green": [HEALTHY]},
        "forward": {"fm-finmesh-risk-preview": health_servers["good"], "fm-finmesh-risk": health_servers["good"]},
    }
    scenario.update(overrides)
    return scenario


# --- dry run ------------------------------------------------------------------------------------------


def _dry_run(current: str, *extra: str) -> list[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finmesh.cli.main",
            "rollout",
            "payments",
            "--to",
            "0.2.0",
            "--dry-run",
            "--current-color",
            current,
            "--synthetic-payer",
            "acct-test-payer",
            "--synthetic-payee",
            "acct-test-payee",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": "/nonexistent"},  # proves it runs neither helm nor kubectl
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _commands(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("#")]


def test_dry_run_blue_to_green_prints_the_exact_commands() -> None:
    """From blue: deploy green (preview off), wait, preview on, analyse, flip to green, scale blue down; rollback."""
    commands = _commands(_dry_run("blue"))
    base = (
        "helm upgrade finmesh deploy/helm/finmesh --namespace finmesh --reuse-values "
        "--set services.payments.activeColor={active} --set-string services.payments.green.tag=0.2.0 "
        "--set services.payments.green.replicas={green} --set services.payments.preview.enabled={preview} "
        "--set-string services.payments.migration.color={migration}"
    )
    pods = (
        "kubectl --namespace finmesh get pods --selector app.kubernetes.io/name=payments,"
        "app.kubernetes.io/instance=finmesh,app.kubernetes.io/component=server,finmesh.io/color=green "
        "--output json"
    )
    assert commands == [
        base.format(active="blue", green=2, preview="false", migration="green") + " --timeout 600s",
        "kubectl --namespace finmesh rollout status deployment/finmesh-payments-green --timeout=300s",
        base.format(active="blue", green=2, preview="true", migration="green") + " --no-hooks --timeout 600s",
        pods,
        "kubectl --namespace finmesh port-forward service/finmesh-payments-preview :50051 --address 127.0.0.1",
        pods,
        base.format(active="green", green=2, preview="true", migration="green") + " --no-hooks --timeout 600s",
        pods,
        "kubectl --namespace finmesh port-forward service/finmesh-payments :50051 --address 127.0.0.1",
        pods,
        base.format(active="green", green=2, preview="false", migration="")
        + " --set services.payments.blue.replicas=0 --no-hooks --timeout 600s",
        base.format(active="blue", green=0, preview="false", migration="") + " --no-hooks --timeout 600s",
    ]


def test_dry_run_green_to_blue_mirrors_the_colors() -> None:
    """From green: every step targets blue, the flip selects blue, green is scaled down; values files are passed."""
    lines = _dry_run(
        "green", "--replicas", "3", "--values", "prod.yaml", "--release", "payments-prod", "--namespace", "fin"
    )
    commands = _commands(lines)
    deploy, wait, preview, _, forward, _, promote, _, _, _, finish, rollback = commands
    assert deploy.startswith(
        "helm upgrade payments-prod deploy/helm/finmesh --namespace fin --reuse-values "
        "--values prod.yaml --set services.payments.activeColor=green "
        "--set-string services.payments.blue.tag=0.2.0 --set services.payments.blue.replicas=3 "
    )
    assert "--no-hooks" not in deploy and "services.payments.migration.color=blue" in deploy
    # Release "payments-prod" does not contain "finmesh": names are "<release>-finmesh-...".
    assert wait == (
        "kubectl --namespace fin rollout status deployment/payments-prod-finmesh-payments-blue --timeout=300s"
    )
    assert "services.payments.preview.enabled=true" in preview and "activeColor=green" in preview
    assert forward.split()[4] == "service/payments-prod-finmesh-payments-preview"
    assert "services.payments.activeColor=blue" in promote
    assert finish.endswith("--set services.payments.green.replicas=0 --no-hooks --timeout 600s")
    assert "services.payments.activeColor=blue" in finish
    assert "services.payments.activeColor=green" in rollback and "services.payments.blue.replicas=0" in rollback
    assert any("synthetic payment" in line and "acct-test-payer -> acct-test-payee" in line for line in lines)


def test_dry_run_refuses_without_current_color_and_payments_without_test_accounts() -> None:
    """--dry-run does not ask the cluster, so it needs the active color; payments needs its synthetic accounts."""
    base = [sys.executable, "-m", "finmesh.cli.main", "rollout", "payments", "--to", "0.2.0", "--dry-run"]
    no_color = subprocess.run(
        [*base, "--no-synthetic-payment"], capture_output=True, text=True, timeout=60, check=False
    )
    assert no_color.returncode == 2 and "--current-color" in no_color.stderr
    no_accounts = subprocess.run(
        [*base, "--current-color", "blue"], capture_output=True, text=True, timeout=60, check=False
    )
    assert no_accounts.returncode == 2 and "--synthetic-payer" in no_accounts.stderr


# --- decisions, with fake helm and kubectl -----------------------------------------------------------


def test_healthy_rollout_promotes_and_scales_the_old_color_down(
    cluster: FakeCluster, health_servers: dict[str, int]
) -> None:
    """Every step in order; the preview Service goes on only after kubectl saw every new pod ready."""
    proc = cluster.rollout(_scenario(health_servers))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [_shape(c) for c in cluster.calls()] == [
        "get values",
        "upgrade active=blue preview=false green=2 blue=-",
        "rollout status",
        "upgrade active=blue preview=true green=2 blue=-",
        "get pods",
        "port-forward service/fm-finmesh-risk-preview",
        "get pods",
        "upgrade active=green preview=true green=2 blue=-",
        "get pods",
        "port-forward service/fm-finmesh-risk",
        "get pods",
        "upgrade active=green preview=false green=2 blue=0",
    ]
    assert "done: risk 0.2.0 on green; blue scaled to 0" in proc.stdout
    assert "analysis: " in proc.stdout and " 0 failed" in proc.stdout


@pytest.mark.parametrize(
    ("case", "green_pods"),
    [
        ("restarted during analysis", [HEALTHY, [pod("fm-finmesh-risk-green-a", restarts=1), HEALTHY[1]]]),
        (
            "crash-looping at the start",
            [[pod("fm-finmesh-risk-green-a", ready=False, waiting="CrashLoopBackOff"), HEALTHY[1]]],
        ),
        ("replaced during analysis", [HEALTHY, [pod("fm-finmesh-risk-green-a", uid="uid-new"), HEALTHY[1]]]),
        ("one pod missing", [[HEALTHY[0]]]),
    ],
)
def test_never_promotes_when_the_preview_color_restarted_or_crashed(
    cluster: FakeCluster, health_servers: dict[str, int], case: str, green_pods: list[Any]
) -> None:
    """A restart, crash loop, replaced or missing pod of the new color stops the rollout before the flip."""
    proc = cluster.rollout(_scenario(health_servers, pods={"green": green_pods}))
    assert proc.returncode == 1, f"{case}: {proc.stdout}{proc.stderr}"
    upgrades = [_sets(c) for c in cluster.upgrades()]
    assert all(u["services.risk.activeColor"] == "blue" for u in upgrades), f"{case}: promoted"
    # The way back: green off and the preview Service gone, in one upgrade.
    assert upgrades[-1]["services.risk.green.replicas"] == "0"
    assert upgrades[-1]["services.risk.preview.enabled"] == "false"
    assert "ABORT: analysis" in proc.stdout and "rolled back: risk runs on blue again" in proc.stdout


def test_rolls_back_when_post_promotion_pods_restart(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """Analysis passes, then a green pod restarts during the watch: flip back to blue and turn green off."""
    restarted = [pod("fm-finmesh-risk-green-a", restarts=2), HEALTHY[1]]
    proc = cluster.rollout(_scenario(health_servers, pods={"green": [HEALTHY, HEALTHY, HEALTHY, restarted]}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    actives = [_sets(c)["services.risk.activeColor"] for c in cluster.upgrades()]
    assert actives == ["blue", "blue", "green", "blue"]
    assert _sets(cluster.upgrades()[-1])["services.risk.green.replicas"] == "0"
    assert "ABORT: post-promotion watch" in proc.stdout and "restarted 2 time(s)" in proc.stdout


def test_rolls_back_when_post_promotion_health_fails(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """Through the active Service the risk service answers NOT_SERVING: the error rate trips, back to blue."""
    forward = {"fm-finmesh-risk-preview": health_servers["good"], "fm-finmesh-risk": health_servers["sick"]}
    proc = cluster.rollout(_scenario(health_servers, forward=forward))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    actives = [_sets(c)["services.risk.activeColor"] for c in cluster.upgrades()]
    assert actives == ["blue", "blue", "green", "blue"]
    assert "error rate 100.0%" in proc.stdout and "NOT_SERVING" in proc.stdout


def test_preview_never_points_at_pods_that_are_not_ready(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """kubectl rollout status fails: the preview Service is never turned on, green is turned off again."""
    proc = cluster.rollout(_scenario(health_servers, never_ready=True))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    previews = [_sets(c)["services.risk.preview.enabled"] for c in cluster.upgrades()]
    assert previews == ["false", "false"]
    assert "did not become ready" in proc.stdout


def test_port_forward_failure_stops_before_the_flip(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """No way to probe the preview Service is a failed analysis, with kubectl's reason in the log."""
    proc = cluster.rollout(_scenario(health_servers, forward={}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert [_sets(c)["services.risk.activeColor"] for c in cluster.upgrades()] == ["blue", "blue", "blue"]
    assert 'services "fm-finmesh-risk-preview" not found' in proc.stdout


def test_failed_rollback_asks_for_a_human(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """The deploy upgrade fails and so does the way back: exit 3 and a message saying so."""
    proc = cluster.rollout(_scenario(health_servers, failing_upgrades=[0, 1]))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ROLLBACK FAILED" in proc.stdout


@pytest.mark.parametrize(
    ("case", "values", "message"),
    [
        ("rollout unfinished", release_values(inactive_replicas=2), "green still runs 2 replicas"),
        ("mTLS without client certificate", release_values(mtls=True), "FINMESH_TLS_CERT_FILE"),
    ],
)
def test_refuses_unsafe_starting_states(
    cluster: FakeCluster, health_servers: dict[str, int], case: str, values: dict[str, Any], message: str
) -> None:
    """States a rollout must not start from: exit 2 and no upgrade at all."""
    proc = cluster.rollout(_scenario(health_servers, values=values))
    assert proc.returncode == 2, f"{case}: {proc.stdout}{proc.stderr}"
    assert message in proc.stderr
    assert cluster.upgrades() == []


def test_same_version_is_refused(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """Rolling out the version the active color already runs is a mistake, not a no-op rollout."""
    values = release_values()
    values["services"]["risk"]["blue"]["tag"] = "0.2.0"
    proc = cluster.rollout(_scenario(health_servers, values=values))
    assert proc.returncode == 2 and "already runs 0.2.0 on blue" in proc.stderr


def test_pod_judgement_reads_kubectl_json() -> None:
    """parse_pods/judge_pods on kubectl's shapes: healthy, not ready, restarted with the last exit reason."""
    healthy = parse_pods({"items": HEALTHY})
    assert judge_pods(healthy, 2) == []
    assert judge_pods(healthy, 3) == ["2 pods, expected 3"]
    restarted = parse_pods({"items": [pod("p", restarts=1)]})
    assert judge_pods(restarted, 1) == ["pod p restarted 1 time(s) ['last exit Error (code 1)']"]
    assert judge_pods(parse_pods({"items": [pod("p", ready=False)]}), 1) == ["pod p is not ready"]


# --- the commands against the real helm and kubectl ----------------------------------------------------


def _plans(active: str) -> RolloutPlan:
    return RolloutPlan(
        cluster=Cluster(release="fm", chart=str(CHART)),
        service="payments",
        version="0.3.0",
        from_color=active,
        replicas=2,
        fullname=fullname("fm"),
    )


def _helm_commands(plan: RolloutPlan) -> dict[str, tuple[str, ...]]:
    return {
        "deploy": plan.deploy(),
        "preview": plan.preview_on(),
        "promote": plan.promote(),
        "finish": plan.finish(),
        "back": plan.back_to_old(),
    }


def _step_values(argv: tuple[str, ...]) -> list[str]:
    """The --values/--set/--set-string arguments of an upgrade, for `helm template`."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("--set", "--set-string", "--values"):
            out += [arg, argv[i + 1]]
    return out


def _by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


# (active Service color, preview Service color or None, running colors, new color's image tag) after each step.
_EXPECTED = {
    "blue": {
        "deploy": ("blue", None, {"blue", "green"}),
        "preview": ("blue", "green", {"blue", "green"}),
        "promote": ("green", "blue", {"blue", "green"}),
        "finish": ("green", None, {"green"}),
        "back": ("blue", None, {"blue"}),
    },
    "green": {
        "deploy": ("green", None, {"blue", "green"}),
        "preview": ("green", "blue", {"blue", "green"}),
        "promote": ("blue", "green", {"blue", "green"}),
        "finish": ("blue", None, {"blue"}),
        "back": ("green", None, {"green"}),
    },
}


@pytest.mark.parametrize("active", ["blue", "green"])
def test_every_set_path_renders_with_the_real_helm(helm: Any, active: str) -> None:
    """Each upgrade's --set paths pass values.schema.json, and the Services select what the step promises."""
    plan = _plans(active)
    base = [] if active == "blue" else ["--values", str(VALUES_DIR / "green-active.yaml")]
    for step, argv in _helm_commands(plan).items():
        result = helm.template(*base, *_step_values(argv))
        assert result.returncode == 0, f"{active} {step}: {result.output}"
        docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
        services = _by_kind(docs, "Service")
        want_active, want_preview, running = _EXPECTED[active][step]
        assert services["fm-finmesh-payments"]["spec"]["selector"]["finmesh.io/color"] == want_active, step
        preview = services.get("fm-finmesh-payments-preview")
        assert (preview["spec"]["selector"]["finmesh.io/color"] if preview else None) == want_preview, step
        hpas = {name for name in _by_kind(docs, "HorizontalPodAutoscaler") if "-payments-" in name}
        assert hpas == {f"fm-finmesh-payments-{c}" for c in running}, step
        deployment = _by_kind(docs, "Deployment")[f"fm-finmesh-payments-{plan.to_color}"]
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "finmesh/payments:0.3.0", step
        if step == "deploy":
            job = _by_kind(docs, "Job")["fm-finmesh-payments-migrate"]
            # The new code runs the expand migration, chosen explicitly (tags need not be versions).
            assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "finmesh/payments:0.3.0"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_helm_and_kubectl_accept_every_command(helm: Any, tmp_path: Path) -> None:
    """The real binaries parse every argv (flags, selectors, resource names) and fail only on the absent cluster."""
    kubectl = Path(str(helm.binary)).with_name("kubectl")
    if not kubectl.exists():
        pytest.skip("tools/helm_tools.sh installed no kubectl")
    server = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    plan = _plans("blue")
    for argv in [
        *_helm_commands(plan).values(),
        plan.wait_ready(),
        plan.get_pods("green"),
        plan.port_forward(plan.preview_service),
    ]:
        if argv[0] == "helm":
            real = [str(helm.binary), *argv[1:], "--kube-apiserver", server]
        else:
            real = [str(kubectl), f"--server={server}", "--request-timeout=2s", *argv[1:]]
        proc = subprocess.run(real, capture_output=True, text=True, timeout=60, env=env, check=False)
        assert proc.returncode != 0
        assert "connection refused" in proc.stderr or "cluster unreachable" in proc.stderr, (argv, proc.stderr)
        assert "unknown flag" not in proc.stderr and "unknown command" not in proc.stderr, (argv, proc.stderr)


# --- the synthetic payment, against real payments ------------------------------------------------------


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI without blocking the event loop that serves the in-process payments."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return int(proc.returncode or 0), out.decode()


@pytest.mark.parametrize(("funded", "expected_exit"), [(True, 0), (False, 1)], ids=["funded", "unfunded"])
async def test_payments_analysis_pays_between_the_test_accounts(
    databases: Any, tmp_path: Path, cluster: FakeCluster, funded: bool, expected_exit: int
) -> None:
    """Through the forwarded Service the rollout pays 7 units at the start and end of each window (4 payments);
    a synthetic payment that payments refuses (payer without funds) stops the rollout before the flip."""
    async with running_mesh(databases, tmp_path, names=("risk", "payments")) as mesh:
        stub = pay_grpc.PaymentsServiceStub(mesh.channel("payments"))
        accounts = []
        for i in range(2):
            reply = await stub.OpenAccount(
                pay_pb.OpenAccountRequest(
                    idempotency_key=f"synthetic-open-{i}",
                    owner_id=f"rollout-test-{i}",
                    kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                    currency_code="CNY",
                )
            )
            accounts.append(reply.account.account_id)
        payer, payee = accounts
        if funded:
            await stub.TopUp(
                pay_pb.TopUpRequest(
                    idempotency_key="synthetic-topup",
                    account_id=payer,
                    channel="test_bank",
                    amount=money_pb2.Money(currency_code="CNY", minor_units=1000),
                )
            )
        port = mesh.services["payments"].server.port
        scenario = {
            "values": release_values(service="payments"),
            "pods": {"green": [HEALTHY]},
            "forward": {"fm-finmesh-payments-preview": port, "fm-finmesh-payments": port},
        }
        argv, env = cluster.prepare(
            scenario, "payments", "--synthetic-payer", payer, "--synthetic-payee", payee, "--synthetic-amount", "7"
        )
        # The probes act as the test accounts' owner (auth is enforced); the token goes by environment.
        env["FINMESH_TOKEN"] = mesh.issuer.customer("rollout-test-0")
        code, out = await _run(argv, env)
        received = (await stub.GetAccount(pay_pb.GetAccountRequest(account_id=payee))).account.balance
    assert code == expected_exit, out
    actives = [_sets(c)["services.payments.activeColor"] for c in cluster.upgrades()]
    if funded:
        assert received.available_minor_units == 4 * 7
        assert actives == ["blue", "blue", "green", "green"]
    else:
        assert received.available_minor_units == 0
        assert "ABORT: analysis: synthetic payment: " in out
        assert "green" not in actives

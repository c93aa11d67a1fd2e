"""`finmesh rollout`: its dry run, its decisions against fake helm/kubectl, and its commands against the real ones.

The fakes are executables on PATH that speak the real CLIs' argv and JSON
(`helm get values --all -o json`, `kubectl get pods -o json`, port-forward's
"Forwarding from" line); the gRPC probes reach a real health server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
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
from finmesh.rollout.commands import Runner
from finmesh.rollout.kube import KubeBackend
from finmesh.rollout.model import Conflict
from finmesh.rollout.plan import Cluster, judge_pods, parse_pods
from tests.inprocess import running_mesh

REPO = Path(__file__).resolve().parents[2]
# Blue-green with short windows: pre-promotion analysis, promotion, post-promotion analysis.
SHORT_STEPS = '[{"analysis": {"seconds": 0.6}}, {"setWeight": 100}, {"analysis": {"seconds": 0.6}}]'
CHART = REPO / "deploy" / "helm" / "finmesh"
VALUES_DIR = Path(__file__).resolve().parent / "values"

# The fake helm and kubectl: one script, told apart by the name it is called as.
FAKE_CLI = r"""
import json, os, sys, time

tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["FAKE_KUBE_LOG"], "a") as log:
    log.write(json.dumps([tool, *args]) + "\n")
with open(os.environ["FAKE_KUBE_SCENARIO"]) as f:
    scenario = json.load(f)
STATE = os.environ["FAKE_KUBE_LOG"] + ".state"  # what the cluster keeps between calls: values, ConfigMaps
os.makedirs(STATE, exist_ok=True)


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def take(counter):
    # How many times this counter was taken before (state survives across invocations).
    path = os.environ["FAKE_KUBE_LOG"] + "." + counter
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    return n


def option(name):
    return args[args.index(name) + 1] if name in args else None


def load(name, default=None):
    path = os.path.join(STATE, name)
    return json.load(open(path)) if os.path.exists(path) else default


def store(name, doc):
    with open(os.path.join(STATE, name + ".tmp"), "w") as f:
        json.dump(doc, f)
    os.replace(os.path.join(STATE, name + ".tmp"), os.path.join(STATE, name))


def apply_set(values, flag, assignment):
    # helm's --set (true/false/integers typed) and --set-string (always a string) on a values tree.
    path, _, raw = assignment.partition("=")
    value = raw
    if flag == "--set":
        value = {"true": True, "false": False}.get(raw, int(raw) if raw.lstrip("-").isdigit() else raw)
    *parents, leaf = path.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


if tool == "helm":
    values = load("values.json", scenario["values"])
    if args[:2] == ["get", "values"]:
        if "--all" not in args or option("--output") != "json":
            fail("fake helm: get values without --all --output json")
        print(json.dumps(values))
    elif args[0] == "upgrade":
        if take("upgrade") in scenario.get("failing_upgrades", []):
            fail('Error: UPGRADE FAILED: context deadline exceeded')
        for i, flag in enumerate(args):
            if flag in ("--set", "--set-string"):
                apply_set(values, flag, args[i + 1])
        store("values.json", values)
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
    elif rest[:2] == ["get", "configmap"]:
        cm = load("configmap-" + rest[2])
        if cm is None:
            fail('Error from server (NotFound): configmaps "%s" not found' % rest[2])
        print(json.dumps(cm))
    elif rest[0] in ("create", "replace") and option("--filename") == "-":
        cm = json.load(sys.stdin)
        name = cm["metadata"]["name"]
        old = load("configmap-" + name)
        if rest[0] == "create" and old is not None:
            fail('Error from server (AlreadyExists): configmaps "%s" already exists' % name)
        if rest[0] == "replace":
            if old is None:
                fail('Error from server (NotFound): configmaps "%s" not found' % name)
            if cm["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
                fail('Error from server (Conflict): Operation cannot be fulfilled on configmaps "%s": the object '
                     'has been modified; please apply your changes to the latest version and try again' % name)
        cm["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1 if old else 1)
        store("configmap-" + name, cm)
        print(json.dumps(cm))
    elif rest[0] == "port-forward":
        target = rest[1].split("/", 1)[1]
        if target not in scenario["forward"]:
            fail('Error from server (NotFound): services "%s" not found' % target)
        print("Forwarding from 127.0.0.1:%d -> %s" % (scenario["forward"][target], rest[2][1:]), flush=True)
        time.sleep(600)
    else:
        fail('error: unknown command "%s" for "kubectl"' % rest[0])
"""


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

    def env(self) -> dict[str, str]:
        """An environment whose PATH finds the fakes first (and no helm/kubectl or TLS override)."""
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
            "FINMESH_ACTOR",
        ):
            env.pop(name, None)
        return env

    def argv(self, verb: str, service: str, *extra: str) -> list[str]:
        """`finmesh rollout <verb> <service> --release fm` (the fake release), with short probe intervals."""
        return [
            sys.executable,
            "-m",
            "finmesh.cli.main",
            "rollout",
            verb,
            service,
            "--release",
            "fm",
            "--chart",
            str(CHART),
            "--probe-interval",
            "0.1",
            # The promotion gates compare this repository's HEAD with itself: compatible, nothing to migrate.
            *(("--source", str(REPO), "--stable-ref", "HEAD", "--candidate-ref", "HEAD") if verb == "start" else ()),
            *extra,
        ]

    def prepare(self, scenario: dict[str, Any], service: str, *extra: str) -> tuple[list[str], dict[str, str]]:
        """`start` to 0.2.0 with short analysis windows and no scale-down delay."""
        self.scenario.write_text(json.dumps(scenario))
        return self.argv(
            "start", service, "--to", "0.2.0", "--steps", SHORT_STEPS, "--scale-down-delay", "0", *extra
        ), (self.env())

    def rollout(self, scenario: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.prepare(scenario, "risk", *extra)
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90, check=False)

    def cli(self, verb: str, service: str, *extra: str, actor: str = "") -> subprocess.CompletedProcess[str]:
        """Another verb against the same fake cluster (its state is in files): another operator's terminal."""
        env = self.env()
        if actor:
            env["FINMESH_ACTOR"] = actor
        return subprocess.run(
            self.argv(verb, service, *extra), capture_output=True, text=True, env=env, timeout=90, check=False
        )

    def state(self, name: str) -> Any:
        return json.loads((Path(str(self.log) + ".state") / name).read_text())

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


def _actions(calls: list[list[str]]) -> list[str]:
    """The calls that act on the release (the record's ConfigMap reads and writes left out)."""
    return [_shape(c) for c in calls if "configmap" not in c and "--filename" not in c]


def _scenario(health_servers: dict[str, int], **overrides: Any) -> dict[str, Any]:
    scenario = {
        "values": release_values(),
        "pods": {"green": [HEALTHY]},
        "forward": {"fm-finmesh-risk-preview": health_servers["good"], "fm-finmesh-risk": health_servers["good"]},
    }
    scenario.update(overrides)
    return scenario


# --- dry run ------------------------------------------------------------------------------------------


def _dry_run(current: str, *extra: str, service: str = "payments") -> list[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finmesh.cli.main",
            "rollout",
            "start",
            service,
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
    """The commands a dry run prints, the record's ConfigMap writes left out."""
    return [line for line in lines if not line.startswith("#") and "--filename -" not in line]


def test_dry_run_blue_to_green_prints_the_exact_commands() -> None:
    """From blue: deploy green (preview off), wait, preview on, analyse, flip to green, analyse, scale blue down."""
    lines = _dry_run("blue")
    base = (
        "helm upgrade finmesh deploy/helm/finmesh --namespace finmesh --reuse-values "
        "--set services.payments.activeColor={active} --set services.payments.blue.replicas={blue} "
        "--set-string services.payments.green.tag=0.2.0 "
        "--set services.payments.green.replicas=2 --set services.payments.preview.enabled={preview} "
        "--set-string services.payments.migration.color={migration}"
    )
    pods = (
        "kubectl --namespace finmesh get pods --selector app.kubernetes.io/name=payments,"
        "app.kubernetes.io/instance=finmesh,app.kubernetes.io/component=server,finmesh.io/color=green "
        "--output json"
    )
    assert _commands(lines) == [
        base.format(active="blue", blue=2, preview="false", migration="green") + " --timeout 600s",
        "kubectl --namespace finmesh rollout status deployment/finmesh-payments-green --timeout=300s",
        base.format(active="blue", blue=2, preview="true", migration="green") + " --no-hooks --timeout 600s",
        pods,
        "kubectl --namespace finmesh port-forward service/finmesh-payments-preview :50051 --address 127.0.0.1 &",
        pods,
        base.format(active="green", blue=2, preview="true", migration="green") + " --no-hooks --timeout 600s",
        pods,
        "kubectl --namespace finmesh port-forward service/finmesh-payments :50051 --address 127.0.0.1 &",
        pods,
        base.format(active="green", blue=0, preview="false", migration="") + " --no-hooks --timeout 600s",
    ]
    # The record: created once, then replaced (optimistic concurrency) after every step.
    writes = [line.split("  #")[0] for line in lines if "--filename -" in line]
    assert writes[0] == "kubectl --namespace finmesh create --filename - --output json"
    assert set(writes[1:]) == {"kubectl --namespace finmesh replace --filename - --output json"}
    assert any("ConfigMap finmesh-payments-rollout: phase=Healthy" in line for line in lines)


def test_dry_run_green_to_blue_mirrors_the_colors() -> None:
    """From green: every step targets blue, the flip selects blue, green is scaled down; values files are passed."""
    lines = _dry_run(
        "green", "--replicas", "3", "--values", "prod.yaml", "--release", "payments-prod", "--namespace", "fin"
    )
    deploy, wait, preview, _, forward, _, promote, _, _, _, finish = _commands(lines)
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
    assert "--set services.payments.green.replicas=0" in finish and "services.payments.activeColor=blue" in finish


def test_dry_run_canary_sizes_the_candidate_by_the_weights() -> None:
    """Canary from blue (2 pods): green starts as 1 pod, 10% and 25% give 1 pod (33%), 50% gives 2, then alone."""
    steps = '[{"setWeight": 10}, {"setWeight": 25}, {"analysis": {"seconds": 30}}, {"setWeight": 50}]'
    lines = _dry_run("blue", "--strategy", "canary", "--steps", steps, service="risk")
    upgrades = [_sets(line.split()) for line in _commands(lines) if line.startswith("helm upgrade")]
    shape = [
        (
            u["services.risk.activeColor"],
            u["services.risk.green.replicas"],
            u["services.risk.blue.replicas"],
            u.get("services.risk.canary.enabled", "-"),
        )
        for u in upgrades
    ]
    assert shape == [
        ("blue", "1", "2", "-"),  # deploy: one pod, no traffic (canary.enabled not set yet)
        ("blue", "1", "2", "true"),  # 10%
        ("blue", "1", "2", "true"),  # 25%
        ("blue", "2", "2", "true"),  # 50%
        ("blue", "2", "2", "true"),  # 100: full size beside stable
        ("green", "2", "2", "false"),  # promotion: green alone
        ("green", "2", "0", "false"),  # blue scaled down
    ]
    assert any("port-forward deployment/finmesh-risk-green" in line for line in lines)
    assert "# risk: setWeight: 10% asked, 33% of pods on green" in lines


def test_dry_run_refuses_without_current_color_and_payments_without_test_accounts() -> None:
    """A dry run without a cluster needs the active color; payments needs its synthetic accounts."""
    base = [sys.executable, "-m", "finmesh.cli.main", "rollout", "start", "payments", "--to", "0.2.0", "--dry-run"]
    env = {**os.environ, "PATH": "/nonexistent"}
    no_color = subprocess.run(
        [*base, "--no-synthetic-payment"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    # Without --current-color it must ask the cluster, and there is none.
    assert no_color.returncode == 2 and "cannot read the release's values" in no_color.stderr
    no_accounts = subprocess.run(
        [*base, "--current-color", "blue"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert no_accounts.returncode == 2 and "--synthetic-payer" in no_accounts.stderr


# --- decisions, with fake helm and kubectl -----------------------------------------------------------


def test_healthy_rollout_promotes_and_scales_the_old_color_down(
    cluster: FakeCluster, health_servers: dict[str, int]
) -> None:
    """Every step in order; the preview Service goes on only after kubectl saw every new pod ready."""
    proc = cluster.rollout(_scenario(health_servers))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _actions(cluster.calls()) == [
        "get values",
        "upgrade active=blue preview=false green=2 blue=2",
        "rollout status",
        "upgrade active=blue preview=true green=2 blue=2",
        "get pods",
        "port-forward service/fm-finmesh-risk-preview",
        "get pods",
        "upgrade active=green preview=true green=2 blue=2",
        "get pods",
        "port-forward service/fm-finmesh-risk",
        "get pods",
        "upgrade active=green preview=false green=2 blue=0",
    ]
    assert "risk: Healthy" in proc.stdout and "green 0.2.0 (candidate)" in proc.stdout
    assert "analysis Successful:" in proc.stderr and " 0 failed" in proc.stderr
    record = json.loads(cluster.state("configmap-fm-finmesh-risk-rollout")["data"]["rollout.json"])
    assert record["phase"] == "Healthy" and record["scaledDown"] and record["lease"] is None


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
    # The way back: green off and the preview Service gone.
    assert upgrades[-1]["services.risk.green.replicas"] == "0"
    assert upgrades[-1]["services.risk.preview.enabled"] == "false"
    assert "risk: Degraded" in proc.stdout and "pre-promotion analysis Failed: pods: " in proc.stdout


def test_rolls_back_when_post_promotion_pods_restart(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """Analysis passes, then a green pod restarts during the watch: flip back to blue and turn green off."""
    restarted = [pod("fm-finmesh-risk-green-a", restarts=2), HEALTHY[1]]
    proc = cluster.rollout(_scenario(health_servers, pods={"green": [HEALTHY, HEALTHY, HEALTHY, restarted]}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    actives = [_sets(c)["services.risk.activeColor"] for c in cluster.upgrades()]
    assert actives == ["blue", "blue", "green", "blue", "blue"]
    assert _sets(cluster.upgrades()[-1])["services.risk.green.replicas"] == "0"
    assert "post-promotion analysis Failed" in proc.stdout and "restarted 2 time(s)" in proc.stdout


def test_rolls_back_when_post_promotion_health_fails(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """Through the active Service the risk service answers NOT_SERVING: the error rate trips, back to blue."""
    forward = {"fm-finmesh-risk-preview": health_servers["good"], "fm-finmesh-risk": health_servers["sick"]}
    proc = cluster.rollout(_scenario(health_servers, forward=forward))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    actives = [_sets(c)["services.risk.activeColor"] for c in cluster.upgrades()]
    assert actives == ["blue", "blue", "green", "blue", "blue"]
    assert "error rate 100.0%" in proc.stdout and "NOT_SERVING" in proc.stdout


def test_preview_never_points_at_pods_that_are_not_ready(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """kubectl rollout status fails: the preview Service is never turned on, green is turned off again."""
    proc = cluster.rollout(_scenario(health_servers, never_ready=True))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    previews = [_sets(c)["services.risk.preview.enabled"] for c in cluster.upgrades()]
    assert previews == ["false", "false", "false"]
    assert "deploy of 0.2.0 on green failed" in proc.stdout and "timed out waiting" in proc.stdout


def test_port_forward_failure_stops_before_the_flip(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """No way to probe the preview Service is a failed analysis, with kubectl's reason in the record."""
    proc = cluster.rollout(_scenario(health_servers, forward={}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert {_sets(c)["services.risk.activeColor"] for c in cluster.upgrades()} == {"blue"}
    assert 'services "fm-finmesh-risk-preview" not found' in proc.stdout


def test_failed_rollback_asks_for_a_human(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """The deploy upgrade fails and so does the way back: exit 3, and the record says so."""
    proc = cluster.rollout(_scenario(health_servers, failing_upgrades=[0, 1, 2]))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "NEEDS A HUMAN" in proc.stderr and "way back to blue failed" in proc.stderr
    status = cluster.cli("status", "risk", "-o", "json")
    assert "way back to blue failed" in json.loads(status.stdout)["message"]


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


def test_a_second_operator_sees_and_continues_the_rollout(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """Alice starts (manual promotion) and her process ends at the pause; bob's processes see it in the
    ConfigMap, promote it (with a reason), then undo it while blue is warm; history names both."""
    steps = '[{"analysis": {"seconds": 0.3}}, {"pause": {}}, {"setWeight": 100}, {"analysis": {"seconds": 0.3}}]'
    cluster.scenario.write_text(json.dumps(_scenario(health_servers)))
    start = cluster.cli("start", "risk", "--to", "0.2.0", "--steps", steps, "--scale-down-delay", "300", actor="alice")
    assert start.returncode == 4, start.stdout + start.stderr
    status = cluster.cli("status", "risk", "-o", "json", actor="bob")
    seen = json.loads(status.stdout)
    assert (seen["phase"], seen["stepIndex"], seen["activeColor"], seen["lease"]) == ("Paused", 1, "blue", None)
    promote = cluster.cli("promote", "risk", "--reason", "CHG-7 approved", actor="bob")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    assert cluster.state("values.json")["services"]["risk"]["activeColor"] == "green"
    assert "blue kept warm (undo possible)" in promote.stdout
    undo = cluster.cli("undo", "risk", "-o", "json", "--reason", "p99 up", actor="bob")
    assert undo.returncode == 0 and json.loads(undo.stdout)["phase"] == "RolledBack"
    risk = cluster.state("values.json")["services"]["risk"]
    assert (risk["activeColor"], risk["green"]["replicas"], risk["preview"]["enabled"]) == ("blue", 0, False)
    history = json.loads(cluster.cli("history", "risk", "-o", "json").stdout)["history"]
    acts = [(e["actor"], e["verb"]) for e in history]
    assert acts[0] == ("alice", "start") and ("alice", "paused") in acts
    assert ("bob", "promote") in acts and ("bob", "undo") in acts
    assert next(e for e in history if e["verb"] == "undo")["reason"] == "p99 up"
    # bob's promote checked the gates alice's start named (this repository's HEAD against itself).
    assert ("bob", "gates") in acts and next(e for e in history if e["verb"] == "gates")["detail"] == (
        "promotion gates passed"
    )
    # The rollout is over: abort has nothing left to do.
    assert cluster.cli("abort", "risk").returncode == 2


def test_start_is_refused_when_the_gates_could_never_look(cluster: FakeCluster, health_servers: dict[str, int]) -> None:
    """Without the two versions' sources the contracts and migrations gates would refuse at promotion: say so
    at start, before anything changes; skipping a gate needs a reason."""
    cluster.scenario.write_text(json.dumps(_scenario(health_servers)))
    argv = cluster.argv("start", "risk", "--to", "0.2.0")
    at = argv.index("--stable-ref")
    without_refs = argv[:at] + argv[at + 4 :]
    for extra, why in (
        ((), "give --stable-ref and --candidate-ref"),
        (("--stable-ref", "HEAD", "--candidate-ref", "no-such-ref"), "'no-such-ref' is no commit"),
        (("--skip-gate", "contracts", "--skip-gate", "migrations"), "--skip-gate needs --reason"),
    ):
        done = subprocess.run([*without_refs, *extra], capture_output=True, text=True, env=cluster.env(), timeout=60)
        assert (done.returncode, why in done.stderr) == (2, True), done.stderr
    assert cluster.upgrades() == []


def test_the_configmap_record_refuses_stale_writes(
    cluster: FakeCluster, health_servers: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """create on an existing record and replace at an old resourceVersion are 409s: model.Conflict."""
    cluster.scenario.write_text(json.dumps(_scenario(health_servers)))
    for name, value in cluster.env().items():
        monkeypatch.setenv(name, value)
    b = KubeBackend(
        Cluster(release="fm", helm=str(cluster.bin / "helm"), kubectl=str(cluster.bin / "kubectl")),
        Runner(lambda line: None),
    )
    assert b.load("risk") == (None, "")
    first = b.save("risk", {"phase": "Progressing"}, "")
    with pytest.raises(Conflict):
        b.save("risk", {"phase": "Progressing"}, "")
    second = b.save("risk", {"phase": "Paused"}, first)
    with pytest.raises(Conflict):
        b.save("risk", {"phase": "Degraded"}, first)
    assert b.load("risk") == ({"phase": "Paused"}, second)
    labels = cluster.state("configmap-fm-finmesh-risk-rollout")["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "finmesh-rollout"


def test_pod_judgement_reads_kubectl_json() -> None:
    """parse_pods/judge_pods on kubectl's shapes: healthy, not ready, restarted with the last exit reason."""
    healthy = parse_pods({"items": HEALTHY})
    assert judge_pods(healthy, 2) == []
    assert judge_pods(healthy, 3) == ["2 pods, expected 3"]
    restarted = parse_pods({"items": [pod("p", restarts=1)]})
    assert judge_pods(restarted, 1) == ["pod p restarted 1 time(s) ['last exit Error (code 1)']"]
    assert judge_pods(parse_pods({"items": [pod("p", ready=False)]}), 1) == ["pod p is not ready"]


# --- the commands against the real helm and kubectl ----------------------------------------------------


def _backend(active: str, printed: list[str]) -> KubeBackend:
    """A dry-run backend of release "fm" whose printed commands land in `printed`."""
    other = "green" if active == "blue" else "blue"
    values = {"services": {"payments": {"activeColor": active, active: {"tag": "0.2.0", "replicas": 2}, other: {}}}}
    return KubeBackend(Cluster(release="fm", chart=str(CHART)), None, values=values, out=printed.append)


def _helm_commands(active: str) -> dict[str, tuple[str, ...]]:
    """The upgrade of each blue-green step (and of the way back from the preview), as the backend builds them."""
    new = "green" if active == "blue" else "blue"
    printed: list[str] = []
    b = _backend(active, printed)
    b.deploy("payments", new, "0.3.0", 2)
    deploy = printed[0]
    b.set_preview("payments", True)
    preview = printed[-1]
    b.set_active("payments", new)
    promote = printed[-1]
    b.scale_down("payments", active)
    finish = printed[-1]
    printed.clear()
    back = _backend(active, printed)
    back.deploy("payments", new, "0.3.0", 2)
    back.set_preview("payments", True)
    back.set_active("payments", active)
    back.scale_down("payments", new)
    steps = {"deploy": deploy, "preview": preview, "promote": promote, "finish": finish, "back": printed[-1]}
    return {step: tuple(shlex.split(line)) for step, line in steps.items()}


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
    new = "green" if active == "blue" else "blue"
    base = [] if active == "blue" else ["--values", str(VALUES_DIR / "green-active.yaml")]
    for step, argv in _helm_commands(active).items():
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
        deployment = _by_kind(docs, "Deployment")[f"fm-finmesh-payments-{new}"]
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "finmesh/payments:0.3.0", step
        if step == "deploy":
            job = _by_kind(docs, "Job")["fm-finmesh-payments-migrate"]
            # The new code runs the expand migration, chosen explicitly (tags need not be versions).
            assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "finmesh/payments:0.3.0"


def test_canary_weights_render_with_the_real_helm(helm: Any) -> None:
    """Each canary upgrade passes the schema; while canary.enabled the active Service selects both colors."""
    printed: list[str] = []
    b = _backend("blue", printed)
    b.deploy("payments", "green", "0.3.0", 1)
    b.set_weight("payments", "green", 25)
    argv = tuple(shlex.split(printed[-1]))
    result = helm.template(*_step_values(argv))
    assert result.returncode == 0, result.output
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    selector = _by_kind(docs, "Service")["fm-finmesh-payments"]["spec"]["selector"]
    assert "finmesh.io/color" not in selector, selector


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_helm_and_kubectl_accept_every_command(helm: Any, tmp_path: Path) -> None:
    """The real binaries parse every argv (flags, selectors, resource names, the record's ConfigMap) and fail
    only on the absent cluster."""
    kubectl = Path(str(helm.binary)).with_name("kubectl")
    if not kubectl.exists():
        pytest.skip("tools/helm_tools.sh installed no kubectl")
    server = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    b = _backend("blue", [])
    cm = json.dumps(b.configmap_doc("payments", {"phase": "Progressing"}, "7"))
    commands: list[tuple[tuple[str, ...], str | None]] = [(argv, None) for argv in _helm_commands("blue").values()]
    commands += [
        (b.get_values_argv(), None),
        (b.wait_ready_argv("payments", "green"), None),
        (b.get_pods_argv("payments", "green"), None),
        (b.port_forward_argv("service/fm-finmesh-payments-preview"), None),
        (b.port_forward_argv("deployment/fm-finmesh-payments-green"), None),
        (b.kubectl("get", "configmap", b.configmap("payments"), "--output", "json"), None),
        (b.kubectl("create", "--filename", "-", "--output", "json"), cm),
        (b.kubectl("replace", "--filename", "-", "--output", "json"), cm),
    ]
    for argv, stdin in commands:
        if argv[0] == "helm":
            real = [str(helm.binary), *argv[1:], "--kube-apiserver", server]
        else:
            real = [str(kubectl), f"--server={server}", "--request-timeout=2s", *argv[1:]]
        proc = subprocess.run(real, capture_output=True, text=True, timeout=60, env=env, check=False, input=stdin)
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
            scenario,
            "payments",
            "--synthetic-payer",
            payer,
            "--synthetic-payee",
            payee,
            "--synthetic-amount",
            "7",
            # No Prometheus here to read the candidate's ledger check from (tests/deploy/test_rollout_analysis.py
            # proves that gate); the record shows the skip and why.
            "--skip-gate",
            "ledger",
            "--reason",
            "no Prometheus in this test",
        )
        # The probes act as the test accounts' owner (auth is enforced); the token goes by environment.
        env["FINMESH_TOKEN"] = mesh.issuer.customer("rollout-test-0")
        code, out = await _run(argv, env)
        received = (await stub.GetAccount(pay_pb.GetAccountRequest(account_id=payee))).account.balance
    assert code == expected_exit, out
    actives = [_sets(c)["services.payments.activeColor"] for c in cluster.upgrades()]
    if funded:
        assert received.available_minor_units == 4 * 7
        assert actives == ["blue", "blue", "green", "green"]  # deploy, preview, promotion, scale-down
    else:
        assert received.available_minor_units == 0
        assert "pre-promotion analysis Failed: synthetic payment: FAILED_PRECONDITION" in out
        assert "green" not in actives

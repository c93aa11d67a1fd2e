"""The Helm chart: lint, render, Kubernetes schemas, blue-green selectors, hardening, values schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# Fixtures (helm, chart_values, need, value_sets) and the `value_set` /
# `invalid_values` parametrization live in conftest.py.

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "finmesh"
SERVICES = ("identity", "payments", "risk", "notify")
COLORS = ("blue", "green")
RELEASE = "fm"  # conftest renders every value set as release "fm"
FULLNAME = "fm-finmesh"

# Which color each Service must select, per value set: (active, preview or None).
# Written out by hand, not derived from the values, so a template bug cannot hide.
_ALL_BLUE = {name: ("blue", None) for name in SERVICES}
EXPECTED_SELECTORS: dict[str, dict[str, tuple[str, str | None]]] = {
    "default": _ALL_BLUE,
    "blue-active": _ALL_BLUE,
    "green-active": {name: ("green", None) for name in SERVICES},
    "preview-on": {
        "identity": ("blue", None),
        "payments": ("blue", "green"),
        "risk": ("green", "blue"),
        "notify": ("blue", None),
    },
    "preview-off": {
        "identity": ("blue", None),
        "payments": ("blue", None),
        "risk": ("green", None),
        "notify": ("blue", None),
    },
    "mtls-on": {**_ALL_BLUE, "payments": ("blue", "green")},
    "minimal": {"identity": ("blue", None), "payments": ("blue", None), "risk": ("blue", None)},
    "auth-registry-rules": _ALL_BLUE,
    "auth-off": _ALL_BLUE,
    "shared-backends": _ALL_BLUE,
}

# Who may connect to whom (the callers in values.yaml: services.<caller>.calls).
EXPECTED_CALLERS = {
    "identity": {"payments", "risk", "notify"},
    "payments": {"risk"},
    "risk": {"identity", "payments"},
    "notify": {"identity", "payments", "risk"},
}

LABEL_KEYS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


def base_name(service: str) -> str:
    """Name of a service's active Service, and stem of its other objects."""
    return f"{FULLNAME}-{service}"


def objects(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    """Rendered objects of one kind by name."""
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env as name -> value (or its valueFrom)."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def _enabled(values: dict[str, Any]) -> list[str]:
    return [name for name in SERVICES if values["services"][name]["enabled"]]


def _server_deployments(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return list(objects(docs, "Deployment").values())


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one process per pod"
    return containers[0]


def test_every_value_set_has_expected_selectors(value_sets: tuple[str, ...]) -> None:
    """The selector table covers exactly the value sets on disk (a new file needs its expectations)."""
    assert set(EXPECTED_SELECTORS) == set(value_sets)


def test_helm_lint_passes_without_warnings(helm: Any, value_set: str) -> None:
    """helm lint --strict passes; the only message is the optional-icon info."""
    result = helm.lint(*helm.values_args(value_set))
    assert result.returncode == 0, result.output
    findings = [line for line in result.output.splitlines() if line.startswith("[")]
    assert findings == ["[INFO] Chart.yaml: icon is recommended"], result.output


def test_rendered_objects_validate_against_kubernetes_schemas(helm: Any, value_set: str, need: Any) -> None:
    """Every rendered object is valid for Kubernetes 1.30 in strict mode (unknown fields are errors)."""
    kubernetes_validate = need("kubernetes_validate")
    docs = helm.render(value_set)
    assert docs
    errors = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, helm.kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_each_enabled_service_gets_its_objects(helm: Any, value_set: str, chart_values: Any) -> None:
    """Per service: ServiceAccount, ConfigMap, active Service, blue and green Deployments; nothing for disabled ones."""
    docs = helm.render(value_set)
    enabled = _enabled(chart_values(value_set))
    for name in SERVICES:
        base = base_name(name)
        expected = {
            ("ServiceAccount", base),
            ("ConfigMap", f"{base}-config"),
            ("Service", base),
            ("Deployment", f"{base}-blue"),
            ("Deployment", f"{base}-green"),
        }
        present = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
        if name in enabled:
            assert expected <= present, expected - present
        else:
            assert not [doc for doc in docs if doc["metadata"]["labels"]["app.kubernetes.io/name"] == name]


def test_active_and_preview_services_select_the_right_color(helm: Any, value_set: str, chart_values: Any) -> None:
    """The active Service selects activeColor's server pods; the preview Service, when on, the other color's."""
    services = objects(helm.render(value_set), "Service")
    expected = EXPECTED_SELECTORS[value_set]
    assert set(expected) == set(_enabled(chart_values(value_set)))
    for name, (active, preview) in expected.items():
        selector = {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "server",
        }
        active_service = services[base_name(name)]
        assert active_service["spec"]["selector"] == {**selector, "finmesh.io/color": active}
        assert active_service["metadata"]["labels"]["finmesh.io/role"] == "active"
        preview_name = f"{base_name(name)}-preview"
        if preview is None:
            assert preview_name not in services
        else:
            assert preview != active
            assert services[preview_name]["spec"]["selector"] == {**selector, "finmesh.io/color": preview}
            assert services[preview_name]["metadata"]["labels"]["finmesh.io/role"] == "preview"
        # Identity's Services also carry its JWKS (tests/deploy/test_chart_jwks.py).
        jwks = [{"name": "jwks", "port": 8080, "targetPort": "jwks", "protocol": "TCP", "appProtocol": "http"}]
        for service in (active_service, services.get(preview_name)):
            if service is not None:
                assert service["spec"]["ports"] == [
                    {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"},
                    *(jwks if name == "identity" else []),
                ]


def test_deployments_select_only_their_color(helm: Any, value_set: str) -> None:
    """Each color's Deployment selects (and labels) only its own color's server pods."""
    for deployment in _server_deployments(helm.render(value_set)):
        color = deployment["metadata"]["labels"]["finmesh.io/color"]
        assert deployment["metadata"]["name"].endswith(f"-{color}")
        match = deployment["spec"]["selector"]["matchLabels"]
        assert match["finmesh.io/color"] == color
        assert match["app.kubernetes.io/component"] == "server"
        assert "app.kubernetes.io/version" not in match, "selectors are immutable; versions change"
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert match.items() <= pod_labels.items()


def test_color_image_version_and_telemetry_env(helm: Any, value_set: str, chart_values: Any) -> None:
    """Each color runs its own tag and says so in FINMESH_* env and OTEL_RESOURCE_ATTRIBUTES."""
    values = chart_values(value_set)
    registry = values["image"]["registry"]
    for deployment in _server_deployments(helm.render(value_set)):
        labels = deployment["metadata"]["labels"]
        name, color = labels["app.kubernetes.io/name"], labels["finmesh.io/color"]
        svc = values["services"][name]
        tag = svc[color]["tag"]
        container = _container(deployment)
        repository = f"{registry}/{svc['image']['repository']}" if registry else svc["image"]["repository"]
        assert container["image"] == f"{repository}:{tag}"
        assert labels["app.kubernetes.io/version"] == tag
        assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == tag
        env = env_of(container)
        assert env["FINMESH_DEPLOYMENT_COLOR"] == color
        assert env["FINMESH_SERVICE_VERSION"] == tag
        attributes = dict(pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
        assert attributes["deployment.color"] == color
        assert attributes["service.version"] == tag
        assert attributes["k8s.deployment.name"] == deployment["metadata"]["name"]
        assert env["FINMESH_DATABASE_URL"] == {
            "secretKeyRef": {"name": svc["database"]["existingSecret"], "key": svc["database"]["key"]}
        }
        assert container["envFrom"] == [{"configMapRef": {"name": f"{base_name(name)}-config"}}]


def test_pods_are_hardened(helm: Any, value_set: str) -> None:
    """Every pod (servers, migrations, tests): non-root, read-only root, no capabilities, seccomp, /tmp, no token."""
    docs = helm.render(value_set)
    pods = []
    for doc in docs:
        if doc["kind"] == "Pod":
            pods.append((doc["metadata"]["name"], doc["spec"]))
        elif doc["kind"] in ("Deployment", "Job"):
            pods.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
    assert pods
    for where, spec in pods:
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] >= 1000, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where


def test_servers_use_native_grpc_probes(helm: Any, value_set: str, chart_values: Any) -> None:
    """Startup, readiness and liveness are Kubernetes gRPC probes on the health port."""
    mtls = chart_values(value_set)["mtls"]
    port = mtls["healthPort"] if mtls["enabled"] else 50051
    for deployment in _server_deployments(helm.render(value_set)):
        container = _container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (deployment["metadata"]["name"], probe)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == 50051
        spec = deployment["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == base_name(deployment["metadata"]["labels"]["app.kubernetes.io/name"])
        # drain delay + grace + margin, so SIGKILL never cuts a drain short
        assert spec["terminationGracePeriodSeconds"] >= 25


def test_every_object_carries_full_labels(helm: Any, value_set: str) -> None:
    """app.kubernetes.io/* on every object; finmesh.io/color on everything that belongs to one color."""
    for doc in helm.render(value_set):
        labels = doc["metadata"]["labels"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for key in LABEL_KEYS:
            assert labels.get(key), f"{where} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "finmesh"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] in SERVICES
        if doc["kind"] in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "Pod", "Service"):
            assert labels["finmesh.io/color"] in COLORS, where


def test_hpa_and_pdb_cover_running_colors(helm: Any, value_set: str, chart_values: Any) -> None:
    """A running color gets an HPA (min = its replicas; the Deployment leaves the count to it) and a PDB."""
    values = chart_values(value_set)
    docs = helm.render(value_set)
    hpas, pdbs = objects(docs, "HorizontalPodAutoscaler"), objects(docs, "PodDisruptionBudget")
    deployments = objects(docs, "Deployment")
    for name in _enabled(chart_values(value_set)):
        svc = values["services"][name]
        for color in COLORS:
            replicas = svc[color]["replicas"]
            deployment_name = f"{base_name(name)}-{color}"
            deployment = deployments[deployment_name]
            autoscaled = svc["autoscaling"]["enabled"] and replicas > 0
            if autoscaled:
                hpa = hpas[deployment_name]
                assert hpa["apiVersion"] == "autoscaling/v2"
                assert hpa["spec"]["scaleTargetRef"] == {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": deployment_name,
                }
                assert hpa["spec"]["minReplicas"] == replicas
                assert hpa["spec"]["maxReplicas"] == svc["autoscaling"]["maxReplicas"]
                assert "replicas" not in deployment["spec"], "helm must not fight the HPA"
            else:
                assert deployment_name not in hpas
                assert deployment["spec"]["replicas"] == replicas
            if svc["pdb"]["enabled"] and replicas > 0:
                assert pdbs[deployment_name]["spec"]["selector"]["matchLabels"]["finmesh.io/color"] == color
            else:
                assert deployment_name not in pdbs


def test_network_policies_admit_only_callers_and_tests(helm: Any) -> None:
    """A service's gRPC port admits its callers' server pods (any color) and its own helm test pods, nothing else."""
    policies = objects(helm.render("default"), "NetworkPolicy")
    # Plus identity's JWKS port policy (tests/deploy/test_chart_jwks.py).
    assert set(policies) == {base_name(name) for name in SERVICES} | {f"{base_name('identity')}-jwks"}
    for name in SERVICES:
        spec = policies[base_name(name)]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert spec["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "server",
        }
        # The second rule opens the metrics port to scrapers (tests/deploy/test_chart_metrics.py).
        rule, metrics_rule = spec["ingress"]
        assert metrics_rule == {"ports": [{"port": 9464, "protocol": "TCP"}]}
        assert rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
        callers, tests = set(), []
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, "no namespaceSelector or ipBlock: namespace-local pods only"
            match = peer["podSelector"]["matchLabels"]
            assert match["app.kubernetes.io/instance"] == RELEASE
            assert "finmesh.io/color" not in match, "both colors of a caller must get through"
            if match["app.kubernetes.io/component"] == "server":
                callers.add(match["app.kubernetes.io/name"])
            else:
                assert match == {
                    "app.kubernetes.io/name": name,
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "helm-test",
                }
                tests.append(match)
        assert callers == EXPECTED_CALLERS[name], name
        assert len(tests) == 1


def test_targets_point_at_active_services_of_callees(helm: Any, chart_values: Any) -> None:
    """FINMESH_<NAME>_TARGET is set for exactly the services a service calls, at their active Service."""
    configmaps = objects(helm.render("default"), "ConfigMap")
    values = chart_values("default")
    for name in SERVICES:
        data = configmaps[f"{base_name(name)}-config"]["data"]
        targets = {key for key in data if key.endswith("_TARGET")}
        calls = values["services"][name]["calls"]
        assert targets == {f"FINMESH_{callee.upper()}_TARGET" for callee in calls}
        for callee in calls:
            assert data[f"FINMESH_{callee.upper()}_TARGET"] == f"{base_name(callee)}:50051"
        assert data["FINMESH_HOST"] == "0.0.0.0"
        assert data["FINMESH_PORT"] == "50051"
        assert data["OTEL_SERVICE_NAME"] == name
        assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")
        for key in ("FINMESH_SHUTDOWN_GRACE_SECONDS", "FINMESH_MAX_CONNECTION_AGE_SECONDS"):
            assert int(data[key]) > 0
        # Pods never run DDL during a rollout: the pre-upgrade Job migrates; a pod on a database
        # that is behind refuses to start with a clear message instead.
        assert data["FINMESH_AUTO_MIGRATE"] == "false"


def test_service_config_overrides_and_optional_parts(helm: Any) -> None:
    """minimal.yaml: config entries win, no OTLP endpoint, no policies/tests/migration where switched off."""
    docs = helm.render("minimal")
    data = objects(docs, "ConfigMap")[f"{base_name('payments')}-config"]["data"]
    assert data["FINMESH_LOG_LEVEL"] == "debug"
    assert data["FINMESH_CALL_TIMEOUT_SECONDS"] == "5"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in data
    assert "FINMESH_NOTIFY_TARGET" not in data, "notify is disabled"
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Pod"}
    assert set(objects(docs, "Job")) == {f"{base_name('identity')}-migrate", f"{base_name('payments')}-migrate"}
    spec = objects(docs, "Deployment")[f"{base_name('payments')}-blue"]["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


def _secret_ref(env: dict[str, Any], name: str) -> tuple[str, str]:
    ref = env[name]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_auth_is_enforced_with_credentials_from_secrets(helm: Any) -> None:
    """Default values: FINMESH_AUTH_MODE=enforce everywhere; each caller's credential, identity's service
    secret and master key come from Secrets by reference, never through a ConfigMap."""
    docs = helm.render("default")
    configmaps = objects(docs, "ConfigMap")
    for name in SERVICES:
        data = configmaps[f"{base_name(name)}-config"]["data"]
        assert data["FINMESH_AUTH_MODE"] == "enforce"
        assert data["FINMESH_SERVICE_NAME"] == name
        assert not [k for k in data if any(word in k for word in ("SECRET", "CREDENTIAL", "MASTER_KEY", "API_KEY"))]
        assert "FINMESH_IDENTITY_REGISTRY_URL" not in data and "FINMESH_RISK_RULES_FILE" not in data
        for color in ("blue", "green"):
            env = env_of(_container(objects(docs, "Deployment")[f"{base_name(name)}-{color}"]))
            if name == "identity":
                assert _secret_ref(env, "FINMESH_SERVICE_SECRET") == ("finmesh-service-secret", "secret")
                assert _secret_ref(env, "FINMESH_IDENTITY_MASTER_KEY") == ("finmesh-identity-master-key", "key")
                assert "FINMESH_SERVICE_CREDENTIAL" not in env  # identity signs its own service tokens
            else:
                assert _secret_ref(env, "FINMESH_SERVICE_CREDENTIAL") == (
                    f"finmesh-{name}-service-credential",
                    "credential",
                )
                assert "FINMESH_SERVICE_SECRET" not in env, "only identity holds the mesh secret"
                assert "FINMESH_IDENTITY_MASTER_KEY" not in env
            assert "FINMESH_IDENTITY_REGISTRY_API_KEY" not in env


def test_registry_rules_and_auth_off(helm: Any) -> None:
    """auth-registry-rules: registry URL in identity's ConfigMap and its key by Secret reference; risk's inline
    rules in their own ConfigMap, mounted read-only where FINMESH_RISK_RULES_FILE points, and a rules edit rolls
    no pods (risk reloads the file). auth-off: FINMESH_AUTH_MODE=off and no credential references."""
    docs = helm.render("auth-registry-rules")
    configmaps = objects(docs, "ConfigMap")
    deployments = objects(docs, "Deployment")
    identity = configmaps[f"{base_name('identity')}-config"]["data"]
    assert identity["FINMESH_IDENTITY_REGISTRY_URL"] == "https://registry.example.com/api"
    env = env_of(_container(deployments[f"{base_name('identity')}-blue"]))
    assert _secret_ref(env, "FINMESH_IDENTITY_REGISTRY_API_KEY") == ("finmesh-registry", "token")
    notify_env = env_of(_container(deployments[f"{base_name('notify')}-blue"]))
    assert _secret_ref(notify_env, "FINMESH_SERVICE_CREDENTIAL") == ("notify-credential", "cred")

    rules = configmaps[f"{base_name('risk')}-rules"]["data"]["rules.yaml"]
    assert yaml.safe_load(rules) == {"version": "2026.01-cluster.1", "amount_tiers": []}
    risk_data = configmaps[f"{base_name('risk')}-config"]["data"]
    assert risk_data["FINMESH_RISK_RULES_FILE"] == "/etc/finmesh/risk/rules.yaml"
    for color in ("blue", "green"):
        pod = deployments[f"{base_name('risk')}-{color}"]["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in _container(deployments[f"{base_name('risk')}-{color}"])["volumeMounts"]}
        assert mounts["rules"] == {"name": "rules", "mountPath": "/etc/finmesh/risk", "readOnly": True}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["rules"]["configMap"]["name"] == f"{base_name('risk')}-rules"
    assert not any(f"{base_name(n)}-rules" in configmaps for n in SERVICES if n != "risk")
    edited = helm.render("auth-registry-rules", "--set-string", "services.risk.rules=version: other")
    assert objects(edited, "ConfigMap")[f"{base_name('risk')}-rules"]["data"]["rules.yaml"].strip() == "version: other"
    before = {n: d["spec"]["template"] for n, d in deployments.items()}
    after = {n: d["spec"]["template"] for n, d in objects(edited, "Deployment").items()}
    assert before == after, "a rules edit must not restart pods"

    off = helm.render("auth-off")
    for name in SERVICES:
        assert objects(off, "ConfigMap")[f"{base_name(name)}-config"]["data"]["FINMESH_AUTH_MODE"] == "off"
        if name != "identity":
            env = env_of(_container(objects(off, "Deployment")[f"{base_name(name)}-blue"]))
            assert "FINMESH_SERVICE_CREDENTIAL" not in env


def test_migration_hook_jobs(helm: Any, value_set: str, chart_values: Any) -> None:
    """A pre-install/pre-upgrade Job per service runs `finmesh-<name> migrate` with the new color's image."""
    values = chart_values(value_set)
    jobs = objects(helm.render(value_set), "Job")
    accounts = objects(helm.render(value_set), "ServiceAccount")
    for name in _enabled(chart_values(value_set)):
        svc = values["services"][name]
        job_name = f"{base_name(name)}-migrate"
        if not svc["migration"]["enabled"]:
            assert job_name not in jobs
            continue
        job = jobs[job_name]
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "helm.sh/hook-weight" in annotations
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        # The hook's ServiceAccount must exist before the Job: it is a hook too, with a lower weight.
        account = accounts[job_name]["metadata"]["annotations"]
        assert account["helm.sh/hook"] == annotations["helm.sh/hook"]
        assert int(account["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["serviceAccountName"] == job_name
        (container,) = spec["containers"]
        assert container["command"] + container["args"] == [f"finmesh-{name}", "migrate"]
        color = job["metadata"]["labels"]["finmesh.io/color"]
        assert svc[color]["replicas"] > 0, "migrations run the image of a color that runs"
        assert container["image"].endswith(f":{svc[color]['tag']}")
        assert env_of(container)["FINMESH_SERVICE_VERSION"] == svc[color]["tag"]
        assert "secretKeyRef" in env_of(container)["FINMESH_DATABASE_URL"]


# (--set arguments for payments, color whose image must run its migration)
MIGRATION_CASES = {
    "steady state: the active color": ([], "blue"),
    "staging green 0.2.0: the new version": (["green.tag=0.2.0", "green.replicas=2", "preview.enabled=true"], "green"),
    "green promoted, blue kept, preview on: still the newer green": (
        ["green.tag=0.2.0", "green.replicas=2", "activeColor=green", "preview.enabled=true"],
        "green",
    ),
    "rolled back to blue, green still up: still the newer green": (
        ["green.tag=0.2.0", "green.replicas=2", "activeColor=blue"],
        "green",
    ),
    "a pre-release is newer than the release before it": (["green.tag=0.2.0-rc.1", "green.replicas=1"], "green"),
    "a pre-release is older than its release": (["green.tag=0.1.0-rc.1", "green.replicas=1"], "blue"),
    "a newer tag on a color that is off does not migrate": (["green.tag=9.0.0", "green.replicas=0"], "blue"),
    "tags that are not versions, preview on: the preview color": (
        ["blue.tag=sha-aaa", "green.tag=sha-bbb", "green.replicas=1", "preview.enabled=true"],
        "green",
    ),
    "tags that are not versions, preview off: the active color": (
        ["blue.tag=sha-aaa", "green.tag=sha-bbb", "green.replicas=1"],
        "blue",
    ),
    "migration.color wins": (["green.tag=0.2.0", "green.replicas=1", "migration.color=blue"], "blue"),
}


def test_migration_runs_the_newest_running_color(helm: Any) -> None:
    """The migration Job never runs an older image than a running color's: expand first, in every rollout step."""
    for case, (settings, color) in MIGRATION_CASES.items():
        args = [arg for setting in settings for arg in ("--set", f"services.payments.{setting}")]
        job = objects(helm.render("default", *args), "Job")[f"{base_name('payments')}-migrate"]
        assert job["metadata"]["labels"]["finmesh.io/color"] == color, case


def test_helm_test_pods_check_health_of_active_and_preview(helm: Any, value_set: str, chart_values: Any) -> None:
    """`helm test` runs `finmesh health` against each active Service and, while preview is on, the preview Service."""
    values = chart_values(value_set)
    pods = objects(helm.render(value_set), "Pod")
    if not values["tests"]["enabled"]:
        assert not pods
        return
    expected = {}
    for name in _enabled(chart_values(value_set)):
        active, preview = EXPECTED_SELECTORS[value_set][name]
        expected[f"{base_name(name)}-test-health"] = (f"{base_name(name)}:50051", active, name)
        if preview:
            expected[f"{base_name(name)}-test-preview-health"] = (f"{base_name(name)}-preview:50051", preview, name)
    assert set(pods) == set(expected)
    for pod_name, (address, color, name) in expected.items():
        pod = pods[pod_name]
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "helm-test"
        assert pod["spec"]["restartPolicy"] == "Never"
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["finmesh", "health", address]
        assert container["image"].endswith(f":{values['services'][name][color]['tag']}")


def test_mtls_certificates_only_when_enabled(helm: Any, value_set: str, chart_values: Any) -> None:
    """With mTLS on, every server and test pod mounts its Secret read-only and names the files; off, nothing."""
    values = chart_values(value_set)
    docs = helm.render(value_set)
    specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    specs += [d["spec"] for d in docs if d["kind"] == "Pod"]
    for spec in specs:
        (container,) = spec["containers"]
        name = container["name"] if container["name"] in SERVICES else container["image"].split("/")[-1].split(":")[0]
        env = env_of(container)
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        if values["mtls"]["enabled"]:
            secret = values["services"][name]["mtls"]["secretName"] or f"{base_name(name)}-tls"
            assert volumes["mtls"]["secret"]["secretName"] == secret
            assert {"name": "mtls", "mountPath": "/etc/finmesh/tls", "readOnly": True} in container["volumeMounts"]
            assert env["FINMESH_TLS_CERT_FILE"] == "/etc/finmesh/tls/tls.crt"
            assert env["FINMESH_TLS_KEY_FILE"] == "/etc/finmesh/tls/tls.key"
            assert env["FINMESH_TLS_CA_FILE"] == "/etc/finmesh/tls/ca.crt"
        else:
            assert "mtls" not in volumes
            assert not [key for key in env if key.startswith("FINMESH_TLS_")]
            assert "FINMESH_HEALTH_PORT" not in env


def test_mtls_moves_probes_to_plaintext_health_port(helm: Any) -> None:
    """The kubelet's gRPC probe cannot speak TLS: with mTLS on, servers also serve health on FINMESH_HEALTH_PORT."""
    for deployment in _server_deployments(helm.render("mtls-on")):
        container = _container(deployment)
        assert env_of(container)["FINMESH_HEALTH_PORT"] == "50052"
        assert {"name": "health", "containerPort": 50052, "protocol": "TCP"} in container["ports"]
        assert container["readinessProbe"]["grpc"] == {"port": 50052}


def test_flipping_active_color_restarts_no_pods(helm: Any) -> None:
    """Promotion (flip activeColor) changes Service selectors only: both colors' pod templates stay byte-identical."""
    before = helm.render("preview-on")
    after = helm.render("preview-on", "--set", "services.payments.activeColor=green")
    templates_before = {n: d["spec"]["template"] for n, d in objects(before, "Deployment").items()}
    templates_after = {n: d["spec"]["template"] for n, d in objects(after, "Deployment").items()}
    assert templates_before == templates_after
    replicas = lambda docs: {n: d["spec"].get("replicas") for n, d in objects(docs, "Deployment").items()}  # noqa: E731
    assert replicas(before) == replicas(after)
    services_after = objects(after, "Service")
    assert services_after[base_name("payments")]["spec"]["selector"]["finmesh.io/color"] == "green"
    assert services_after[f"{base_name('payments')}-preview"]["spec"]["selector"]["finmesh.io/color"] == "blue"


def test_staging_a_new_version_touches_only_the_inactive_color(helm: Any) -> None:
    """Setting green's tag and size leaves blue's Deployment exactly as it was."""
    before = objects(helm.render("default"), "Deployment")
    after = objects(
        helm.render(
            "default", "--set", "services.payments.green.tag=0.9.0", "--set", "services.payments.green.replicas=2"
        ),
        "Deployment",
    )
    blue = f"{base_name('payments')}-blue"
    assert before[blue] == after[blue]
    green = f"{base_name('payments')}-green"
    assert _container(after[green])["image"].endswith(":0.9.0")


def _directives(path: Path, name: str) -> list[str]:
    """The values of '# <name>: ...' lines (or bare '# <name>' flags, as '') in a values file."""
    found = []
    for line in path.read_text().splitlines():
        if line == f"# {name}":
            found.append("")
        elif line.startswith(f"# {name}:"):
            found.append(line.removeprefix(f"# {name}:").strip())
    return found


def test_invalid_values_are_rejected_with_a_clear_message(helm: Any, invalid_values: Path) -> None:
    """helm template refuses the file and shows the error; so does helm lint, unless only the templates can tell.

    helm lint runs templates in lint mode, where `fail` is only reported ("[INFO] Fail: ...") and
    does not fail the lint; files marked "rejected-by: template" hold rules JSON Schema cannot express.
    """
    expected = _directives(invalid_values, "expect")
    assert expected, f"{invalid_values.name} needs a '# expect: <message>' line"
    extra = ["--skip-schema-validation"] if _directives(invalid_values, "skip-schema") else []
    template_only = _directives(invalid_values, "rejected-by") == ["template"]
    lint = helm.lint("-f", str(invalid_values), *extra)
    template = helm.template("-f", str(invalid_values), *extra)
    assert template.returncode != 0, template.output
    if template_only:
        assert "[INFO] Fail: " in lint.output, lint.output
    else:
        assert lint.returncode != 0, lint.output
    for message in expected:
        assert message in template.output, template.output
        assert message in lint.output, lint.output


def test_values_yaml_conforms_to_schema_by_check_jsonschema(need: Any) -> None:
    """values.schema.json is a valid draft-07 schema and the chart's own values.yaml passes it."""
    need("check_jsonschema")
    schema = CHART / "values.schema.json"
    for args in (
        ["--check-metaschema", str(schema)],
        ["--schemafile", str(schema), str(CHART / "values.yaml")],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_forbids_unknown_keys_everywhere() -> None:
    """Every object in the schema either lists its properties with additionalProperties false or is a free-form map."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    free_form = {"global", "nodeSelector", "podAnnotations", "stringMap"}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, path
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}/{index}")

    walk(schema, "#")
    assert schema["additionalProperties"] is False
    assert free_form <= set(schema["properties"]) | set(schema["definitions"])


def test_chart_metadata() -> None:
    """Chart.yaml: apiVersion v2, a kubeVersion that has native gRPC probes, and the name the docs use."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "finmesh"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["kubeVersion"] == ">=1.27.0-0"
    assert f"{RELEASE}-{chart['name']}" == FULLNAME


def test_pool_and_overload_values_reach_the_service_settings(helm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's connection pools and limits arrive under the names the services read (a misspelt
    variable would be ignored silently and leave the code defaults, sized for one local process)."""
    from finmesh.platform.config import ServiceSettings

    configmaps = objects(helm.render("default"), "ConfigMap")
    for name in SERVICES:
        data = configmaps[f"{base_name(name)}-config"]["data"]
        with monkeypatch.context() as env:
            for key, value in data.items():
                if key.startswith("FINMESH_"):
                    env.setenv(key, value)
            settings = ServiceSettings()
        assert (settings.db_pool_size, settings.db_read_pool_size) == (5, 10), name
        assert (settings.rate_limit_per_caller_rps, settings.max_concurrent_rpcs) == (200, 1000), name

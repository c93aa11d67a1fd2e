"""The chart's progressive delivery: canary under the finmesh engine, Argo Rollouts under the argo engine
(Rollout, Services, AnalysisTemplates validated against Argo's CRD schemas), and the analysis PromQL run
by the real promtool."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from finmesh.rollout import argo
from tests.prometheus import binary

# Fixtures (helm, need, crd_validator) live in conftest.py.

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "finmesh"
SERVICES = ("identity", "payments", "risk", "notify")
FULLNAME = "fm-finmesh"
PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
HASH_LABEL = "rollouts-pod-template-hash"
ARGO_KINDS = {"Rollout", "AnalysisTemplate"}

ARGO = ("--set", "rollouts.engine=argo", "--set", f"rollouts.analysis.prometheusAddress={PROMETHEUS}")
MONITOR = ("--set", "metrics.serviceMonitor.enabled=true")
ALL_CANARY = tuple(arg for name in SERVICES for arg in ("--set", f"services.{name}.rollout.strategy=canary"))
FINMESH_CANARY = tuple(
    arg
    for name in SERVICES
    for arg in ("--set", f"services.{name}.canary.enabled=true", "--set", f"services.{name}.green.replicas=1")
)
RENDERS = {
    "finmesh": (),
    "finmesh-canary": FINMESH_CANARY,
    "argo-bluegreen": (*ARGO, *MONITOR),
    "argo-canary": (*ARGO, *MONITOR, *ALL_CANARY),
}


def base(name: str) -> str:
    return f"{FULLNAME}-{name}"


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def env_of(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = template["spec"]["containers"]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.fixture(scope="module")
def render(helm: Any) -> Any:
    """render(name) -> the objects of one of RENDERS (helm caches each render for the session)."""
    return lambda name: helm.render("default", *RENDERS[name])


# ---- what each engine renders -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["argo-bluegreen", "argo-canary"])
def test_argo_renders_a_rollout_per_service_and_no_color_deployments(render: Any, name: str) -> None:
    """Under argo every service is one Rollout (plus its AnalysisTemplates), never two color Deployments."""
    docs = render(name)
    assert not by_kind(docs, "Deployment")
    assert set(by_kind(docs, "Rollout")) == {base(n) for n in SERVICES}
    templates = by_kind(docs, "AnalysisTemplate")
    expected = {"argo-bluegreen": ("60s", "120s"), "argo-canary": ("60s",)}[name]
    assert set(templates) == {f"{base(n)}-analysis-{s}" for n in SERVICES for s in expected}
    servers = [doc for doc in docs if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "server"]
    assert not [doc["metadata"]["name"] for doc in servers if "finmesh.io/color" in doc["metadata"]["labels"]]


@pytest.mark.parametrize("name", ["finmesh", "finmesh-canary"])
def test_finmesh_renders_no_argo_objects(render: Any, name: str) -> None:
    """The finmesh engine renders two Deployments per service and nothing of Argo's."""
    docs = render(name)
    assert not [doc for doc in docs if doc["kind"] in ARGO_KINDS]
    assert set(by_kind(docs, "Deployment")) == {f"{base(n)}-{c}" for n in SERVICES for c in ("blue", "green")}


@pytest.mark.parametrize("name", list(RENDERS))
def test_core_objects_validate_against_kubernetes_schemas(render: Any, name: str, need: Any, helm: Any) -> None:
    """Every core object, and each Rollout's pod template (as a Deployment's), is valid Kubernetes 1.30, strict."""
    kubernetes_validate = need("kubernetes_validate")
    docs = list(render(name))
    for rollout in by_kind(render(name), "Rollout").values():
        # The CRD models check the pod template's types but not unknown fields: the core schema does.
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": rollout["metadata"]["name"]},
                "spec": {"selector": rollout["spec"]["selector"], "template": rollout["spec"]["template"]},
            }
        )
    errors = []
    for doc in docs:
        if doc["kind"] in ARGO_KINDS or doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(doc, helm.kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", ["argo-bluegreen", "argo-canary"])
def test_argo_objects_validate_against_argo_rollouts_crd_schemas(render: Any, name: str, crd_validator: Any) -> None:
    """Rollouts, AnalysisTemplates and the ServiceMonitors pass @kubernetes-models' CRD validators."""
    docs = [doc for doc in render(name) if doc["kind"] in ARGO_KINDS | {"ServiceMonitor"}]
    assert {doc["kind"] for doc in docs} == ARGO_KINDS | {"ServiceMonitor"}
    results = crd_validator(docs)
    errors = [f"{d['kind']}/{d['metadata']['name']}: {e}" for d, errs in zip(docs, results, strict=True) for e in errs]
    assert not errors, "\n".join(errors)


def test_the_crd_validator_refuses_a_malformed_rollout(render: Any, crd_validator: Any) -> None:
    """The Argo validators are really applied: a string weight and a missing activeService are refused."""
    rollout = copy.deepcopy(by_kind(render("argo-canary"), "Rollout")[base("payments")])
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWeight"] = "10"
    bluegreen = copy.deepcopy(by_kind(render("argo-bluegreen"), "Rollout")[base("payments")])
    del bluegreen["spec"]["strategy"]["blueGreen"]["activeService"]
    weight, active = crd_validator([rollout, bluegreen])
    assert "setWeight must be integer" in " ".join(weight)
    assert "activeService" in " ".join(active)


# ---- one pod template for both engines, the color under argo -------------------------------------------


def test_the_rollout_runs_the_active_color_deployments_pod_template(render: Any) -> None:
    """Same pod template as the active color's Deployment, but for what names the color (shared helper)."""
    deployments = by_kind(render("finmesh"), "Deployment")
    rollouts = by_kind(render("argo-bluegreen"), "Rollout")
    for name in SERVICES:
        deployment = copy.deepcopy(deployments[f"{base(name)}-blue"]["spec"]["template"])
        rollout = copy.deepcopy(rollouts[base(name)]["spec"]["template"])
        for template in (deployment, rollout):
            template["metadata"]["labels"].pop("finmesh.io/color", None)
            (spread,) = template["spec"]["topologySpreadConstraints"]
            spread["labelSelector"]["matchLabels"].pop("finmesh.io/color", None)
            spread.pop("matchLabelKeys")
            for item in template["spec"]["containers"][0]["env"]:
                if item["name"] in ("FINMESH_DEPLOYMENT_COLOR", "OTEL_RESOURCE_ATTRIBUTES"):
                    item.pop("value", None)
                    item.pop("valueFrom", None)
        assert rollout == deployment, name
        (spread,) = rollouts[base(name)]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert spread["matchLabelKeys"] == [HASH_LABEL]


def test_under_argo_the_color_is_the_pod_template_hash(render: Any) -> None:
    """FINMESH_DEPLOYMENT_COLOR (metrics' deployment_color) is the pod's rollouts-pod-template-hash label."""
    for rollout in by_kind(render("argo-canary"), "Rollout").values():
        env = env_of(rollout["spec"]["template"])
        assert env["FINMESH_DEPLOYMENT_COLOR"] == {"fieldRef": {"fieldPath": f"metadata.labels['{HASH_LABEL}']"}}
        attributes = env["OTEL_RESOURCE_ATTRIBUTES"].split(",")
        assert "deployment.color=$(FINMESH_DEPLOYMENT_COLOR)" in attributes
        assert "service.version=0.1.0" in attributes
        names = [item["name"] for item in rollout["spec"]["template"]["spec"]["containers"][0]["env"]]
        assert names.index("FINMESH_DEPLOYMENT_COLOR") < names.index("OTEL_RESOURCE_ATTRIBUTES"), "$(...) order"


# ---- what selects the pods -----------------------------------------------------------------------------


def test_finmesh_canary_active_service_selects_both_colors_and_preview_is_off(render: Any) -> None:
    """canary.enabled: the active Service has no color in its selector, so both colors' pods share the calls."""
    services = by_kind(render("finmesh-canary"), "Service")
    deployments = by_kind(render("finmesh-canary"), "Deployment")
    for name in SERVICES:
        selector = services[base(name)]["spec"]["selector"]
        assert "finmesh.io/color" not in selector
        assert f"{base(name)}-preview" not in services
        for color in ("blue", "green"):
            pods = deployments[f"{base(name)}-{color}"]["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= pods.items(), (name, color)
    # Without canary the active Service still selects one color.
    assert by_kind(render("finmesh"), "Service")[base("payments")]["spec"]["selector"]["finmesh.io/color"] == "blue"


@pytest.mark.parametrize("name", ["argo-bluegreen", "argo-canary"])
def test_under_argo_everything_that_selects_pods_selects_the_rollouts(render: Any, name: str) -> None:
    """Services, metrics Service, PDB, HPA, NetworkPolicy and ServiceMonitor reach the Rollout's pods, by no color."""
    docs = render(name)
    services, rollouts = by_kind(docs, "Service"), by_kind(docs, "Rollout")
    for svc in SERVICES:
        rollout = rollouts[base(svc)]
        pod_labels = rollout["spec"]["template"]["metadata"]["labels"]
        assert "finmesh.io/color" not in pod_labels
        selectors = {
            "active": services[base(svc)]["spec"]["selector"],
            "metrics": services[f"{base(svc)}-metrics"]["spec"]["selector"],
            "pdb": by_kind(docs, "PodDisruptionBudget")[base(svc)]["spec"]["selector"]["matchLabels"],
            "networkpolicy": by_kind(docs, "NetworkPolicy")[base(svc)]["spec"]["podSelector"]["matchLabels"],
            "rollout": rollout["spec"]["selector"]["matchLabels"],
        }
        strategy = rollout["spec"]["strategy"]
        if name == "argo-bluegreen":
            selectors["preview"] = services[f"{base(svc)}-preview"]["spec"]["selector"]
            assert strategy["blueGreen"]["activeService"] == base(svc)
            assert strategy["blueGreen"]["previewService"] == f"{base(svc)}-preview"
        else:
            assert f"{base(svc)}-preview" not in services
        for what, selector in selectors.items():
            assert selector.items() <= pod_labels.items(), (svc, what)
        assert f"{base(svc)}-metrics-blue" not in services
        hpa = by_kind(docs, "HorizontalPodAutoscaler")[base(svc)]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": base(svc)}
        assert "replicas" not in rollout["spec"], "the HPA owns the count"
        monitor = by_kind(docs, "ServiceMonitor")[base(svc)]["spec"]
        assert HASH_LABEL in monitor["podTargetLabels"]


# ---- the strategies and their analysis ----------------------------------------------------------------


def test_bluegreen_strategy_follows_the_values(helm: Any) -> None:
    """activeService/previewService, autoPromotion, scaleDownDelay and the pre/post analyses come from values."""
    docs = helm.render(
        "default",
        *ARGO,
        "--set",
        "services.risk.rollout.blueGreen.autoPromotionEnabled=false",
        "--set",
        "services.risk.rollout.blueGreen.scaleDownDelaySeconds=45",
        "--set",
        "services.risk.rollout.blueGreen.postPromotionAnalysisSeconds=0",
        "--set",
        "services.risk.rollout.blueGreen.prePromotionAnalysisSeconds=25",
    )
    strategy = by_kind(docs, "Rollout")[base("risk")]["spec"]["strategy"]["blueGreen"]
    assert strategy["autoPromotionEnabled"] is False
    assert strategy["scaleDownDelaySeconds"] == 45
    assert "postPromotionAnalysis" not in strategy
    assert strategy["prePromotionAnalysis"]["templates"] == [{"templateName": f"{base('risk')}-analysis-25s"}]
    assert strategy["prePromotionAnalysis"]["args"] == [
        {"name": "latest-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
        {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
    ]
    (template,) = [t for n, t in by_kind(docs, "AnalysisTemplate").items() if n.startswith(base("risk"))]
    assert [m["count"] for m in template["spec"]["metrics"]] == [3, 3], "ceil(25 / 10)"


def test_canary_steps_follow_the_values_in_argos_words(render: Any) -> None:
    """setWeight stays, pause {seconds} becomes pause {duration}, analysis {seconds} its template and hashes."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name in SERVICES:
        steps = by_kind(render("argo-canary"), "Rollout")[base(name)]["spec"]["strategy"]["canary"]["steps"]
        expected = []
        for step in values["services"][name]["rollout"]["canary"]["steps"]:
            if "setWeight" in step:
                expected.append({"setWeight": step["setWeight"]})
            elif "pause" in step:
                expected.append({"pause": {"duration": step["pause"]["seconds"]} if step["pause"] else {}})
            else:
                expected.append({"analysis": {"templates": [{"templateName": f"{base(name)}-analysis-60s"}]}})
        for got in steps:
            if "analysis" in got:
                assert [a["name"] for a in got["analysis"].pop("args")] == ["latest-hash", "stable-hash"]
        assert steps == expected


def test_analysis_templates_carry_the_values_and_the_generated_metrics(helm: Any) -> None:
    """Args hold rollouts.analysis.* (thresholds, window), metrics the generated queries, interval/count/limits."""
    docs = helm.render(
        "default",
        *ARGO,
        "--set-json",
        "rollouts.analysis.maxErrorRate=0.02",
        "--set",
        "rollouts.analysis.window=2m",
        "--set",
        "rollouts.analysis.intervalSeconds=15",
        "--set",
        "rollouts.analysis.failureLimit=2",
    )
    template = by_kind(docs, "AnalysisTemplate")[f"{base('notify')}-analysis-120s"]["spec"]
    args = {arg["name"]: arg.get("value") for arg in template["args"]}
    assert args == {
        "service": "notify",
        "window": "2m",
        "max-error-rate": "0.02",
        "max-error-rate-increase": "0.005",
        "max-latency-p99-ratio": "1.5",
        "latency-slack-seconds": "0.025",
        "min-call-rate": "0.2",
        "latest-hash": None,
        "stable-hash": None,
    }
    generated = {m["name"]: m for m in argo.metrics()}
    for metric in template["metrics"]:
        assert metric["provider"]["prometheus"] == {
            "address": PROMETHEUS,
            "query": generated[metric["name"]]["provider"]["prometheus"]["query"],
        }
        assert (metric["interval"], metric["count"], metric["failureLimit"], metric["inconclusiveLimit"]) == (
            "15s",
            8,
            2,
            3,
        )
        assert (metric["successCondition"], metric["failureCondition"]) == (argo.SUCCESS, argo.FAILURE)


def test_the_committed_analysis_file_is_the_current_render() -> None:
    """files/rollouts/analysis-metrics.yaml is what `python -m finmesh.rollout.argo` writes today."""
    committed = (REPO / argo.OUTPUT).read_text()
    assert committed == argo.render(), "regenerate it: python -m finmesh.rollout.argo"
    queries = " ".join(metric["provider"]["prometheus"]["query"] for metric in argo.metrics())
    used = {part.split("}}")[0] for part in queries.split("{{args.")[1:]}
    assert used == {arg["name"] for arg in argo.args()}, "the declared args are exactly those the queries use"


# ---- refusals ------------------------------------------------------------------------------------------

REFUSALS = {
    "engine-unknown": (("--set", "rollouts.engine=flagger"), "rollouts.engine"),
    "argo-without-prometheus": (("--set", "rollouts.engine=argo"), "prometheusAddress"),
    "canary-with-preview": (
        (
            "--set",
            "services.risk.canary.enabled=true",
            "--set",
            "services.risk.preview.enabled=true",
            "--set",
            "services.risk.green.replicas=1",
        ),
        "services.risk.preview.enabled",
    ),
    "canary-without-candidate-pods": (
        ("--set", "services.risk.canary.enabled=true"),
        "services.risk.green.replicas is 0: a canary needs pods of both colors",
    ),
    "argo-with-finmesh-canary": ((*ARGO, "--set", "services.risk.canary.enabled=true"), "under argo set"),
    "strategy-unknown": (("--set", "services.risk.rollout.strategy=rolling"), "services.risk.rollout.strategy"),
    "weight-above-100": (("--set", "services.risk.rollout.canary.steps[0].setWeight=150"), "services.risk.rollout"),
}


# Refused by the chart's `fail` (checks across values the schema cannot express), not by the schema.
TEMPLATE_ONLY = {"canary-without-candidate-pods", "argo-with-finmesh-canary"}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_values_fail_with_a_clear_message(helm: Any, case: str) -> None:
    """Bad engine, argo without Prometheus, canary with preview or one color empty: helm template refuses, and
    helm lint too where the schema does (lint reports a template's `fail` as INFO only)."""
    args, message = REFUSALS[case]
    results = [helm.template(*args)]
    if case not in TEMPLATE_ONLY:
        results.append(helm.lint(*args))
    for result in results:
        assert result.returncode != 0, result.output
        assert message in result.output, result.output


@pytest.mark.parametrize("name", ["argo-bluegreen", "argo-canary", "finmesh-canary"])
def test_helm_lint_passes_for_both_engines(helm: Any, name: str) -> None:
    """helm lint --strict passes for each engine and strategy."""
    result = helm.lint(*RENDERS[name])
    assert result.returncode == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("[")] == [
        "[INFO] Chart.yaml: icon is recommended"
    ]


# ---- the analysis PromQL, run by the real promtool ------------------------------------------------------

THRESHOLDS = {
    "max-error-rate": "0.01",
    "max-error-rate-increase": "0.005",
    "max-latency-p99-ratio": "1.5",
    "latency-slack-seconds": "0.025",
    "min-call-rate": "0.2",
    "window": "1m",
    "latest-hash": "new",
    "stable-hash": "old",
}
STEP = 15  # seconds between input samples


def _series(service: str, color: str, ok: float, errors: float, le: str) -> list[dict[str, str]]:
    """Counters of `ok` and `errors` calls/s, every call's duration in the bucket `le`."""
    labels = f'service_name="{service}", deployment_color="{color}", rpc_service="finmesh.x.v1.X"'
    total = ok + errors
    out = [
        {
            "series": f'rpc_server_call_duration_seconds_count{{{labels}, rpc_response_status_code="{code}"}}',
            "values": f"0+{rate * STEP:g}x40",
        }
        for code, rate in (("OK", ok), ("INTERNAL", errors))
    ]
    for bound in ("0.01", "0.025", "0.05", "0.1", "+Inf"):
        inside = bound == "+Inf" or float(bound) >= float(le)
        out.append(
            {
                "series": f'rpc_server_call_duration_seconds_bucket{{{labels}, le="{bound}"}}',
                "values": f"0+{(total if inside else 0) * STEP:g}x40",
            }
        )
    return out


# Scenario: (latest calls, stable calls or None) as (ok/s, errors/s, latency bucket); expected verdicts
# (error-rate, latency-p99): 1 passed, 0 failed, None no result (Inconclusive).
SCENARIOS: dict[str, tuple[tuple[float, float, str], tuple[float, float, str] | None, int | None, int | None]] = {
    "healthy": ((10, 0.05, "0.025"), (10, 0, "0.025"), 1, 1),
    "errors": ((9, 1, "0.025"), (10, 0, "0.025"), 0, 1),
    "errors-stable-shows-too": ((9.68, 0.32, "0.025"), (9.7, 0.3, "0.025"), 1, 1),
    "slow": ((10, 0, "0.1"), (10, 0, "0.01"), 1, 0),
    "too-few-calls": ((0.1, 0.05, "0.1"), (10, 0, "0.01"), None, None),
    "no-stable-baseline": ((10, 0.05, "0.1"), None, 1, 1),
    # The stable ReplicaSet is still scraped but took no call in the window: its rates are NaN (0/0).
    "stable-idle": ((10, 0.05, "0.1"), (0, 0, "0.01"), 1, 1),
    "stable-idle-errors": ((9, 1, "0.1"), (0, 0, "0.01"), 0, 1),
    "no-stable-baseline-errors": ((9, 1, "0.1"), None, 0, 1),
}


def _substitute(query: str, service: str) -> str:
    for name, value in {**THRESHOLDS, "service": service}.items():
        query = query.replace("{{args." + name + "}}", value)
    assert "{{" not in query
    return query


def test_analysis_queries_judge_as_the_thresholds_say(tmp_path: Path) -> None:
    """Run by promtool over synthetic series: pass, fail, a stable fault tolerated, too few calls inconclusive,
    and a missing stable baseline judged against maxErrorRate alone."""
    promtool = binary("promtool")
    series: list[dict[str, str]] = []
    tests: list[dict[str, Any]] = []
    metrics = {m["name"]: m["provider"]["prometheus"]["query"] for m in argo.metrics()}
    for scenario, (latest, stable, error_ok, latency_ok) in SCENARIOS.items():
        series += _series(scenario, "new", *latest)
        if stable is not None:
            series += _series(scenario, "old", *stable)
        for metric, verdict in (("error-rate", error_ok), ("latency-p99", latency_ok)):
            expr = f"({_substitute(metrics[metric], scenario)}) <= bool 0"
            samples = [] if verdict is None else [{"labels": "{}", "value": verdict}]
            tests.append({"expr": expr, "eval_time": "5m", "exp_samples": samples})
    spec = {"tests": [{"interval": f"{STEP}s", "input_series": series, "promql_expr_test": tests}]}
    path = tmp_path / "analysis-test.yaml"
    path.write_text(json.dumps(spec))
    run = subprocess.run(
        [str(promtool), "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr

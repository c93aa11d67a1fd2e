"""The chart's metrics: the metrics port and its Services for both colors, the prometheus-operator objects
(validated against the operator's CRD schemas) and the Grafana dashboard's queries (against the catalogue)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finmesh.slo.catalogue import CATALOGUE, RESOURCE_LABELS, TARGET_LABELS, series_labels
from finmesh.slo.objectives import AVAILABILITY, LATENCY, SERVER_FAULT_CODES

# Fixtures (helm, chart_values, need, need_tool, crd_validator) and the `value_set` parametrization live in conftest.py.

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "finmesh"
RULES_FILE = CHART / "files" / "prometheus" / "finmesh-rules.yaml"
DASHBOARD_FILE = CHART / "files" / "grafana" / "finmesh-overview.json"
SERVICES = ("identity", "payments", "risk", "notify")
COLORS = ("blue", "green")
FULLNAME = "fm-finmesh"
METRICS_PORT = 9464

# Value sets with the operator objects on (files under values/monitoring/, not parametrized by conftest:
# test_helm_chart.py's Kubernetes-schema check knows core objects only).
MONITORING_ON = "monitoring/monitoring-on"


def base_name(service: str) -> str:
    return f"{FULLNAME}-{service}"


def objects(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _enabled(values: dict[str, Any]) -> list[str]:
    return [name for name in SERVICES if values["services"][name]["enabled"]]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# ---- the metrics port, on every value set ------------------------------------------------------------


def test_every_server_serves_metrics_on_a_named_port(helm: Any, value_set: str, chart_values: Any) -> None:
    """Each server container opens "metrics", the settings get its number, and the pod says how to scrape it."""
    deployments = objects(helm.render(value_set), "Deployment")
    configmaps = objects(helm.render(value_set), "ConfigMap")
    for name in _enabled(chart_values(value_set)):
        data = configmaps[f"{base_name(name)}-config"]["data"]
        assert (data["FINMESH_METRICS_ENABLED"], data["FINMESH_METRICS_PORT"]) == ("true", str(METRICS_PORT))
        for color in COLORS:
            template = deployments[f"{base_name(name)}-{color}"]["spec"]["template"]
            (container,) = template["spec"]["containers"]
            assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in container["ports"]
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert annotations["prometheus.io/port"] == str(METRICS_PORT)
            assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_settings_read_the_metrics_port(helm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """FINMESH_METRICS_* arrive under the names ServiceSettings reads (a misspelt one would leave port 0: random)."""
    from finmesh.platform.config import ServiceSettings

    for metrics_on, expected in ((True, (True, METRICS_PORT)), (False, (False, -1))):
        args = () if metrics_on else ("--set", "metrics.enabled=false")
        data = objects(helm.render("default", *args), "ConfigMap")[f"{base_name('payments')}-config"]["data"]
        with monkeypatch.context() as env:
            for key, value in data.items():
                if key.startswith("FINMESH_"):
                    env.setenv(key, value)
            settings = ServiceSettings()
        assert (settings.metrics_enabled, settings.metrics_port) == expected


def test_each_color_has_a_headless_metrics_service(helm: Any, value_set: str, chart_values: Any) -> None:
    """Both colors are scrapeable whichever is active: a metrics Service per color, selecting that color only."""
    services = objects(helm.render(value_set), "Service")
    for name in _enabled(chart_values(value_set)):
        for color in COLORS:
            service = services[f"{base_name(name)}-metrics-{color}"]
            assert service["metadata"]["labels"]["finmesh.io/role"] == "metrics"
            assert service["metadata"]["labels"]["finmesh.io/color"] == color
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["selector"] == {
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/instance": "fm",
                "app.kubernetes.io/component": "server",
                "finmesh.io/color": color,
            }
            assert service["spec"]["ports"] == [
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
            ]


def test_flipping_the_active_color_leaves_metrics_objects_alone(helm: Any) -> None:
    """A promotion changes what the active Service selects, never what is scraped or how."""
    before = helm.render(MONITORING_ON)
    after = helm.render(MONITORING_ON, "--set", "services.payments.activeColor=green")
    # (Their app.kubernetes.io/version label follows the active color, like every shared object's.)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert {n: o["spec"] for n, o in objects(before, kind).items()} == {
            n: o["spec"] for n, o in objects(after, kind).items()
        }
    metrics_services = lambda docs: {n: s for n, s in objects(docs, "Service").items() if "-metrics-" in n}  # noqa: E731
    assert metrics_services(before) == metrics_services(after)


def test_network_policy_admits_scrapers_to_the_metrics_port_only(helm: Any) -> None:
    """The metrics port gets its own rule (from metrics.networkPolicy.from, or anywhere); the gRPC rule is unchanged."""
    for value_set, peers in (
        ("default", None),
        (MONITORING_ON, [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
    ):
        for name, policy in objects(helm.render(value_set), "NetworkPolicy").items():
            if name.endswith("-jwks"):
                continue  # identity's JWKS port alone (tests/deploy/test_chart_jwks.py)
            grpc_rule, metrics_rule = policy["spec"]["ingress"]
            assert grpc_rule["ports"] == [{"port": 50051, "protocol": "TCP"}], name
            expected: dict[str, Any] = {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}]}
            if peers is not None:
                expected["from"] = peers
            assert metrics_rule == expected, name


def test_metrics_off_removes_port_services_and_annotations(helm: Any) -> None:
    """metrics.enabled=false: no metrics port, Service, annotation or NetworkPolicy rule; the servers record nothing."""
    docs = helm.render("default", "--set", "metrics.enabled=false")
    assert not [n for n in objects(docs, "Service") if "-metrics-" in n]
    for deployment in objects(docs, "Deployment").values():
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        jwks = ["jwks"] if deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "identity" else []
        assert [p["name"] for p in container["ports"]] == ["grpc", *jwks]
        assert not [a for a in template["metadata"]["annotations"] if a.startswith("prometheus.io/")]
    for policy in objects(docs, "NetworkPolicy").values():
        assert len(policy["spec"]["ingress"]) == 1
    for name in SERVICES:
        data = objects(docs, "ConfigMap")[f"{base_name(name)}-config"]["data"]
        assert (data["FINMESH_METRICS_ENABLED"], data["FINMESH_METRICS_PORT"]) == ("false", "-1")


# More cases as files in values/invalid/metrics-*.yaml, which test_helm_chart.py also lints.
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["mtls.enabled=true", "metrics.port=50052"], "metrics.port (50052) must differ from mtls.healthPort"),
        (["metrics.prometheusRule.enabled=true", "metrics.enabled=false"], "metrics.prometheusRule.enabled is true"),
        (["metrics.scrape=true"], "metrics: Additional property scrape is not allowed"),
        (["metrics.dashboard.labels.bad label=1"], "bad label"),
    ],
    ids=["health-port-clash", "rule-without-metrics", "unknown-key", "bad-label"],
)
def test_invalid_metrics_values_are_rejected(helm: Any, settings: list[str], message: str) -> None:
    """The schema and the templates refuse metrics values that would deploy something broken."""
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = helm.template(*args)
    assert result.returncode != 0, result.output
    assert message in result.output, result.output


def test_monitoring_objects_are_off_by_default(helm: Any, value_sets: tuple[str, ...]) -> None:
    """Clusters without the operator or Grafana's sidecar install the chart as before."""
    for value_set in value_sets:
        docs = helm.render(value_set)
        assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")], value_set
        assert f"{FULLNAME}-dashboard" not in objects(docs, "ConfigMap"), value_set


# ---- the operator objects ---------------------------------------------------------------------------


def test_monitoring_value_set_lints_and_every_object_validates(helm: Any, need: Any, crd_validator: Any) -> None:
    """helm lint --strict passes; core objects validate against Kubernetes 1.30 (strict), the operator's
    against its CRD schemas; both kinds of operator object are there."""
    lint = helm.lint(*helm.values_args(MONITORING_ON))
    assert lint.returncode == 0, lint.output
    assert [line for line in lint.output.splitlines() if line.startswith("[")] == [
        "[INFO] Chart.yaml: icon is recommended"
    ]
    kubernetes_validate = need("kubernetes_validate")
    docs = helm.render(MONITORING_ON)
    operator = [doc for doc in docs if doc["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {doc["kind"] for doc in operator} == {"ServiceMonitor", "PrometheusRule"}
    errors = []
    for doc, problems in zip(operator, crd_validator(operator), strict=True):
        errors += [f"{doc['kind']}/{doc['metadata']['name']}: {problem}" for problem in problems]
    for doc in docs:
        if doc in operator:
            continue
        try:
            kubernetes_validate.validate(doc, helm.kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_crd_validation_catches_a_broken_object(helm: Any, crd_validator: Any) -> None:
    """The CRD schemas are really applied: a malformed duration and a rule without expr are errors."""
    docs = helm.render(MONITORING_ON)
    monitor = json.loads(json.dumps(objects(docs, "ServiceMonitor")[base_name("payments")]))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    rule = json.loads(json.dumps(objects(docs, "PrometheusRule")[FULLNAME]))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    unknown = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitr", "metadata": {"name": "x"}}
    monitor_errors, rule_errors, unknown_errors = crd_validator([monitor, rule, unknown])
    assert any("interval" in error for error in monitor_errors), monitor_errors
    assert any("expr" in error for error in rule_errors), rule_errors
    assert unknown_errors == ["no CRD schema for monitoring.coreos.com/v1 ServiceMonitr"]


def test_service_monitors_scrape_both_colors_and_keep_their_labels(helm: Any, chart_values: Any) -> None:
    """A ServiceMonitor per service selects exactly that service's per-color metrics Services, on their metrics
    port, and copies the pod's service, version and color labels onto the targets."""
    values = chart_values(MONITORING_ON)
    docs = helm.render(MONITORING_ON)
    monitors, services, deployments = (
        objects(docs, "ServiceMonitor"),
        objects(docs, "Service"),
        objects(docs, "Deployment"),
    )
    assert set(monitors) == {base_name(name) for name in _enabled(values)}
    for name in _enabled(values):
        monitor = monitors[base_name(name)]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        selected = {
            n for n, s in services.items() if _matches(spec["selector"]["matchLabels"], s["metadata"]["labels"])
        }
        assert selected == {f"{base_name(name)}-metrics-{color}" for color in COLORS}
        assert spec["namespaceSelector"] == {"matchNames": ["finmesh"]}
        (endpoint,) = spec["endpoints"]
        assert endpoint == {
            "port": "metrics",
            "path": "/metrics",
            "scheme": "http",
            "interval": "15s",
            "scrapeTimeout": "10s",
        }
        for service_name in selected:
            assert "metrics" in [port["name"] for port in services[service_name]["spec"]["ports"]]
        assert {"finmesh.io/color", "app.kubernetes.io/name"} <= set(spec["podTargetLabels"])
        for color in COLORS:
            pod_labels = deployments[f"{base_name(name)}-{color}"]["spec"]["template"]["metadata"]["labels"]
            assert set(spec["podTargetLabels"]) <= set(pod_labels)
            assert pod_labels["finmesh.io/color"] == color
        # Prometheus writes those labels with "_" for "." and "/": the names the catalogue promises.
        promised = {re.sub(r"[^A-Za-z0-9_]", "_", label) for label in spec["podTargetLabels"]}
        assert promised <= TARGET_LABELS


def test_prometheus_rule_holds_the_rule_file_groups(helm: Any) -> None:
    """spec.groups is exactly the groups of files/prometheus/finmesh-rules.yaml, the file promtool checks."""
    expected = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert expected, "the rule file has no groups"
    rule = objects(helm.render(MONITORING_ON), "PrometheusRule")[FULLNAME]
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/component"] == "monitoring"


def test_runbook_links_point_where_the_runbook_is_published(helm: Any) -> None:
    """With runbookBaseURL set every alert links to its section there; the rules are otherwise the file's."""
    base = "https://git.example.com/finmesh/blob/v1/docs/RUNBOOK.md"
    rule = objects(
        helm.render(MONITORING_ON, "--set", f"metrics.prometheusRule.runbookBaseURL={base}"), "PrometheusRule"
    )[FULLNAME]
    expected = yaml.safe_load(RULES_FILE.read_text())["groups"]
    links = []
    for group in expected:
        for rule_def in group["rules"]:
            if "alert" in rule_def:
                anchor = rule_def["annotations"]["runbook_url"].partition("#")[2]
                rule_def["annotations"]["runbook_url"] = f"{base}#{anchor}"
                links.append(anchor)
    assert links and rule["spec"]["groups"] == expected


def test_dashboard_ships_as_a_sidecar_configmap(helm: Any) -> None:
    """The dashboard JSON, unchanged, in a ConfigMap with the sidecar's label and folder annotation."""
    configmap = objects(helm.render(MONITORING_ON), "ConfigMap")[f"{FULLNAME}-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Payments platform"}
    (key,) = configmap["data"]
    assert key == DASHBOARD_FILE.name
    assert json.loads(configmap["data"][key]) == json.loads(DASHBOARD_FILE.read_text())


# ---- the dashboard ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<range>\[[^\[\]]*\])"""
    r"""|(?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"""
    r"""|(?P<op>=~|!~|!=|==|>=|<=|[{}()=<>+\-*/^%,])"""
)
_AGGREGATIONS = {"sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group"}
_FUNCTIONS = _AGGREGATIONS | {
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "time",
    "clamp_min",
    "clamp_max",
    "abs",
    "sort_desc",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
_DURATION = re.compile(r"\[(\$__rate_interval|\$__range|\$__interval|\d+[smhdwy])\]")


class Query:
    """What a PromQL expression reads: metric names, their selector labels, grouping labels."""

    def __init__(self, expr: str) -> None:
        self.metrics: set[str] = set()
        self.selector_labels: list[tuple[str, str]] = []  # (metric, label)
        self.grouping: set[str] = set()
        self._parse(expr)

    def _tokens(self, expr: str) -> Iterator[tuple[str, str]]:
        pos = 0
        while pos < len(expr):
            match = _TOKEN.match(expr, pos)
            assert match, f"unexpected {expr[pos : pos + 20]!r} in {expr}"
            pos = match.end()
            if match.lastgroup != "space":
                yield match.lastgroup or "", match.group()

    def _parse(self, expr: str) -> None:
        tokens = list(self._tokens(expr))
        stack: list[str] = []
        pairs = {")": "(", "}": "{"}
        for kind, text in tokens:
            if kind == "op" and text in "({":
                stack.append(text)
            elif kind == "op" and text in ")}":
                assert stack and stack.pop() == pairs[text], f"unbalanced {text!r} in {expr}"
            elif kind == "range":
                assert _DURATION.fullmatch(text), f"bad range {text} in {expr}"
        assert not stack, f"unclosed {stack} in {expr}"
        i = 0
        while i < len(tokens):
            kind, text = tokens[i]
            following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
            if kind == "ident" and text in _GROUPING:
                assert following == "(", f"{text} without a label list in {expr}"
                i += 2
                while tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        self.grouping.add(tokens[i][1])
                    i += 1
            elif kind == "ident" and (following == "(" or text in _AGGREGATIONS):
                assert text in _FUNCTIONS, f"unknown function {text} in {expr}"
            elif kind == "ident" and text not in _KEYWORDS:
                self.metrics.add(text)
                if following == "{":
                    i += 2
                    while tokens[i][1] != "}":
                        label, operator, value = tokens[i], tokens[i + 1], tokens[i + 2]
                        assert label[0] == "ident" and operator[1] in ("=", "!=", "=~", "!~") and value[0] == "string"
                        self.selector_labels.append((text, label[1]))
                        i += 3
                        if tokens[i][1] == ",":
                            i += 1
            elif kind == "op" and text == "{":
                raise AssertionError(f"a selector without a metric name in {expr}")
            i += 1


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return dashboard


def _panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def _exprs() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every query."""
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in _panels()
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_a_grafana_dashboard_with_variables() -> None:
    """Top-level fields Grafana needs, a datasource variable every panel uses, and service/color variables."""
    dashboard = _dashboard()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("service_name", "deployment_color"):
        query = variables[name]["definition"]
        assert variables[name]["query"]["query"] == query
        match = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", query)
        assert match, query
        assert match.group(3) == name
        assert name in series_labels()[match.group(1)]
    for panel in _panels():
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_panel_has_title_unique_id_and_a_place_of_its_own() -> None:
    """Titles, unique ids, gridPos inside the 24-column grid, no two panels overlapping; panels have queries."""
    panels = _panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel["title"]
        assert title.strip()
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), title
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, title
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = title
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() and t["refId"] for t in panel["targets"]), title


def test_every_query_reads_only_catalogued_metrics_and_labels() -> None:
    """Each expr parses (balanced, known functions, sane ranges), names only catalogued series, filters and
    groups only by labels those series carry, and its legend uses only those labels."""
    catalogue = series_labels()
    exprs = _exprs()
    assert exprs
    for title, expr, legend in exprs:
        query = Query(expr)
        assert query.metrics, f"{title}: {expr} reads no metric"
        unknown = query.metrics - set(catalogue)
        assert not unknown, f"{title}: {sorted(unknown)} not in tools/finmesh/slo/catalogue.py"
        for metric, label in query.selector_labels:
            assert label in catalogue[metric], f"{title}: {metric} has no label {label}"
        available = set().union(*(catalogue[metric] for metric in query.metrics))
        assert query.grouping <= available, f"{title}: grouping by {query.grouping - available}"
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert legend_labels <= available, f"{title}: legend uses {legend_labels - available}"


def test_query_checks_catch_mistakes() -> None:
    """The checks above can fail: a typo in a metric, a label it lacks, an unbalanced expression."""
    catalogue = series_labels()
    assert Query("sum(rate(finmesh_payment_total[5m]))").metrics - set(catalogue) == {"finmesh_payment_total"}
    query = Query('rate(finmesh_payments_total{payment_id="1"}[5m])')
    assert ("finmesh_payments_total", "payment_id") in query.selector_labels
    assert "payment_id" not in catalogue["finmesh_payments_total"]
    for broken in ("sum(rate(up[5m])", "sum by (status (x)", "rate(x[5 minutes])", 'sum({job="x"})', "nosuch(x)"):
        with pytest.raises(AssertionError):
            Query(broken)


def test_dashboard_covers_red_payments_outbox_notify_and_slos() -> None:
    """The panels the issue asks for, each grounded in the metric that answers it."""
    exprs = [expr for _, expr, _ in _exprs()]
    joined = "\n".join(exprs)
    rpc = [Query(expr) for expr in exprs if "rpc_server_call_duration_seconds" in expr]
    # RED by color: status codes, an error ratio, p50 and p99 from the buckets, all split by color.
    assert any({"rpc_response_status_code", "deployment_color"} <= q.grouping for q in rpc)
    assert "histogram_quantile(0.5, " in joined and "histogram_quantile(0.99, " in joined
    assert any("deployment_color" in q.grouping and "le" in q.grouping for q in rpc)
    for metric in (
        "finmesh_payments_total",
        "finmesh_ledger_batch_size_bucket",
        "finmesh_ledger_commit_duration_seconds_bucket",
        "finmesh_outbox_backlog",
        "finmesh_outbox_oldest_age_seconds",
        "finmesh_notify_queue_depth",
        "finmesh_notify_queue_oldest_age_seconds",
    ):
        assert re.search(rf"\b{metric}\b", joined), metric
    assert any("consumer" in Query(e).grouping for e in exprs if "finmesh_outbox_backlog" in e)
    assert any("status" in Query(e).grouping for e in exprs if "finmesh_payments_total" in e)
    # SLOs from tools/finmesh/slo/objectives.py: the server-fault codes, the availability target as a
    # threshold, and each latency class at its bucket bound (the exporter writes le as Python's float repr).
    faults = f'rpc_response_status_code=~"{"|".join(SERVER_FAULT_CODES)}"'
    assert faults in joined
    (target,) = {objective.target for objective in AVAILABILITY}
    slo_panels = [p for p in _panels() if any(faults in target["expr"] for target in p.get("targets", []))]
    assert any(
        target in [step["value"] for step in p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])]
        for p in slo_panels
    ), "no SLO panel marks the availability objective"
    for objective in LATENCY:
        assert f'rpc_method=~"{objective.methods}"' in joined, objective.name
        assert f'le="{float(objective.threshold_seconds)!r}"' in joined, objective.name


def test_catalogue_is_well_formed() -> None:
    """Valid, unique Prometheus names; counters end in _total; no label that could hold an id or personal data."""
    names = [metric.name for metric in CATALOGUE]
    assert len(names) == len(set(names))
    for metric in CATALOGUE:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", metric.name), metric.name
        assert metric.name.endswith("_total") == (metric.kind == "counter"), metric.name
        for label in metric.labels | RESOURCE_LABELS:
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", label), label
            assert not re.search(r"(^|_)(id|user|account|payment_id|email|phone|name_of)($|_)", label), label

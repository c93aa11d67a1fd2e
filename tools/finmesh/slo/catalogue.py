"""The metrics finmesh exports, by their Prometheus names: what dashboards, rules and reports may query.

The dashboard test checks every query against this list, and the end-to-end test checks the list against a
real scrape, so a renamed instrument shows up as a failing test rather than as an empty panel. Names are as
the Prometheus exposition writes them (OTel names with dots as underscores, unit suffix, `_total` on
counters); a histogram is listed by its stem and exported as `_bucket`, `_count` and `_sum` series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Every series carries the service's resource attributes (finmesh.platform.observability.metrics).
RESOURCE_LABELS = frozenset({"service_name", "service_version", "deployment_color"})

# The bucket bound label of a histogram's `_bucket` series.
BUCKET_LABEL = "le"

# What the scrape adds to every series: Prometheus' own target labels and the chart's ServiceMonitor
# podTargetLabels (deploy/helm/finmesh: app.kubernetes.io/name, app.kubernetes.io/version, finmesh.io/color).
TARGET_LABELS = frozenset(
    {
        "job",
        "instance",
        "namespace",
        "pod",
        "service",
        "container",
        "endpoint",
        "app_kubernetes_io_name",
        "app_kubernetes_io_version",
        "finmesh_io_color",
    }
)

Kind = Literal["counter", "gauge", "histogram"]

_RPC_LABELS = frozenset({"rpc_system_name", "rpc_service", "rpc_method", "rpc_response_status_code"})
_POOL = "db_client_connection_pool_name"


@dataclass(frozen=True)
class Metric:
    name: str  # counters with their `_total`, histograms by stem
    kind: Kind
    labels: frozenset[str]  # the metric's own labels, besides RESOURCE_LABELS

    def series(self) -> dict[str, frozenset[str]]:
        """Series names this metric is exported as, each with every label it can carry."""
        labels = self.labels | RESOURCE_LABELS
        if self.kind != "histogram":
            return {self.name: labels}
        return {
            f"{self.name}_bucket": labels | {BUCKET_LABEL},
            f"{self.name}_count": labels,
            f"{self.name}_sum": labels,
        }


def _m(name: str, kind: Kind, *labels: str) -> Metric:
    return Metric(name, kind, frozenset(labels))


CATALOGUE = (
    # Platform RPC
    Metric("rpc_server_call_duration_seconds", "histogram", _RPC_LABELS),
    Metric("rpc_client_call_duration_seconds", "histogram", _RPC_LABELS),
    _m("finmesh_rpc_server_active_calls", "gauge", "rpc_system_name", "rpc_service", "rpc_method"),
    _m("finmesh_rpc_server_refusals_total", "counter", "reason"),
    _m("finmesh_ratelimit_backend", "gauge", "backend"),
    _m("finmesh_ratelimit_fallbacks_total", "counter", "reason"),
    # Platform storage and messaging (every service)
    _m("finmesh_outbox_backlog", "gauge", "consumer"),
    _m("finmesh_outbox_oldest_age_seconds", "gauge", "consumer"),
    _m("finmesh_outbox_parked", "gauge", "consumer"),
    _m("db_client_connection_count", "gauge", _POOL, "db_client_connection_state"),
    _m("db_client_connection_pending_requests", "gauge", _POOL),
    _m("db_client_connection_wait_time_seconds", "histogram", _POOL),
    _m("finmesh_idempotency_replays_total", "counter", "rpc_method"),
    # payments
    _m("finmesh_payments_total", "counter", "status", "risk_decision"),
    _m("finmesh_ledger_batch_size", "histogram"),
    _m("finmesh_ledger_commit_duration_seconds", "histogram"),
    _m("finmesh_payments_channel_operations_total", "counter", "operation", "state"),
    _m("finmesh_ledger_invariant_violations", "gauge"),
    _m("finmesh_ledger_invariant_last_check_timestamp_seconds", "gauge"),
    # risk
    _m("finmesh_risk_decisions_total", "counter", "decision"),
    _m("finmesh_risk_warnings_total", "counter", "level"),
    _m("finmesh_risk_rules_fired_total", "counter", "rule"),
    _m("finmesh_risk_assessment_batch_size", "histogram", "batch"),  # batch: request (one call) | commit
    # notify
    _m("finmesh_notify_deliveries_total", "counter", "channel", "outcome"),
    _m("finmesh_notify_queue_depth", "gauge", "lane"),
    _m("finmesh_notify_queue_oldest_age_seconds", "gauge", "lane"),
    _m("finmesh_notify_dead_letters", "gauge", "channel"),
    _m("finmesh_notify_complaints_overdue", "gauge"),
    _m("finmesh_notify_complaints_due_soon", "gauge"),
)


def series_labels() -> dict[str, frozenset[str]]:
    """Every exported series name with the labels it can carry."""
    return {name: labels for metric in CATALOGUE for name, labels in metric.series().items()}

"""OpenTelemetry metrics: one MeterProvider per process, Prometheus exposition on /metrics, OTLP when configured.

Code records through the OTel API (`opentelemetry.metrics.get_meter`), never through a Prometheus client: the
instruments are the same whichever reader exports them. A process without `setup_metrics` (an in-process test,
a CLI) records into the API's no-op meter, at next to no cost.

Labels: the resource's `service.name`, `service.version` and `deployment.color` are copied onto every series at
export (`service_name`, `service_version`, `deployment_color`), so PromQL can split by color without a join on
`target_info` and recording costs nothing more per measurement. Attributes on a measurement must have a small,
fixed set of values: a status, a channel, a lane, a rule id; never a user, account or payment id.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.resource import resource_for

_log = get_logger("finmesh.metrics")

# Latency buckets for gRPC calls and the transactions inside them, sub-millisecond to seconds. The latency
# objectives' thresholds (deploy/.../slo) must be among them, or their ratios would be interpolated guesses.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Items per batch (ledger writer, assessment batches, event deliveries).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Ages of waiting work (the outbox's oldest event, notify's oldest message): seconds to a day.
AGE_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400, 86400)

# Resource attributes copied as labels onto every exported series.
RESOURCE_LABELS = frozenset({"service.name", "service.version", "deployment.color"})


def meter(name: str) -> metrics.Meter:
    """The meter for instrumentation scope `name` (a module's dotted name, e.g. "finmesh.payments")."""
    return metrics.get_meter(name)


@dataclass
class MetricsEndpoint:
    """The process's meter provider and, when one was asked for, its /metrics HTTP server."""

    provider: MeterProvider
    host: str = ""
    port: int = 0  # 0: no /metrics server
    _server: Any = None  # the exposition's HTTP server (its thread stops with it)

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}/metrics" if self.port else ""

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.provider.shutdown()


def setup_metrics(service: str, *, version: str, color: str, host: str, port: int | None) -> MetricsEndpoint:
    """Install the process-wide meter provider for `service`.

    `port`: serve Prometheus exposition on host:port/metrics (0 picks a free port; None serves none). OTLP
    export is added when OTEL_EXPORTER_OTLP_ENDPOINT (or its _METRICS_ variant) is set, as for spans.

    Exemplars (a trace id beside a histogram's bucket) are kept only for OTLP, or when
    OTEL_METRICS_EXEMPLAR_FILTER asks: Prometheus' text exposition cannot carry them, and offering one on every
    record in a sampled span costs about a third of the record (bench.metrics).
    """
    readers: list[MetricReader] = []
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
    if port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        # No otel_scope_* labels: the metric names already say which part of finmesh recorded them.
        readers.append(
            PrometheusMetricReader(resource_attribute_filter=RESOURCE_LABELS.__contains__, scope_info_enabled=False)
        )
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    provider = MeterProvider(
        resource=resource_for(service, version=version, color=color),
        metric_readers=readers,
        exemplar_filter=None if otlp or os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER") else AlwaysOffExemplarFilter(),
    )
    metrics.set_meter_provider(provider)
    endpoint = MetricsEndpoint(provider)
    if port is not None:
        from prometheus_client import start_http_server

        # The exposition server is a thread of its own: a scrape never waits for the event loop.
        server, _thread = start_http_server(port, addr=host)
        endpoint.host, endpoint.port = host, int(server.server_port)
        endpoint._server = server
    return endpoint


Probe = Callable[[], Awaitable[None]]


async def sample_every(interval: float, probe: Probe, *, name: str) -> None:
    """Run `probe` every `interval` seconds until cancelled: for gauges read from a database (queue depths,
    backlog ages), which a scrape's thread cannot await. A failing probe is logged and tried again."""
    while True:
        try:
            await probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a gauge must never take its service down
            _log.warning("metrics_probe_failed", probe=name, error=type(exc).__name__)
        await asyncio.sleep(interval)

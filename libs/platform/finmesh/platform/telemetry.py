"""OpenTelemetry tracing: one provider per process, OTLP or a local JSONL span file, PII-masked."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from finmesh.platform.pii import mask_value
from finmesh.platform.propagation import FinmeshPropagator


class JsonlSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file; `finmesh trace` renders them."""

    def __init__(self, path: str | Path, *, mask: bool = False) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Masking while serialising spares the copy of every span MaskingExporter makes; the export thread
        # competes with the handlers for the GIL, so its cost per span is the services' cost.
        self._mask = mask

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s, mask=self._mask), ensure_ascii=False) + "\n" for s in spans)
        with self._lock, self._path.open("a", encoding="utf-8") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class MaskingExporter(SpanExporter):
    """Masks personal data in span attributes and events before any exporter sees them."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([_masked(s) for s in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _masked_attributes(attributes: Any) -> dict[str, Any]:
    return {k: mask_value(k, v) for k, v in (attributes or {}).items()}


def _masked(span: ReadableSpan) -> ReadableSpan:
    attrs = _masked_attributes(span.attributes)
    # Events carry free text too (an exception's message and stack trace quote the values that failed).
    events = [Event(e.name, _masked_attributes(e.attributes), e.timestamp) for e in span.events]
    status = span.status
    if status.description:
        status = Status(status.status_code, mask_value("description", status.description))
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attrs,
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def span_to_dict(span: ReadableSpan, *, mask: bool = False) -> dict[str, Any]:
    ctx = span.context
    attributes = _masked_attributes(span.attributes) if mask else dict(span.attributes or {})
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name", ""),
        # Color and version let an SRE split a local run's spans as in the collector.
        "resource": _resource_dict(span.resource),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": attributes,
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x")}
            for link in span.links
        ],
    }


# id(resource) -> (resource, its dict): a process has one resource, so build its dict once, not per span
# (keyed by identity because Resource hashes by serialising its attributes; holding it keeps the id valid).
_RESOURCE_DICTS: dict[int, tuple[Resource, dict[str, Any]]] = {}


def _resource_dict(resource: Resource) -> dict[str, Any]:
    cached = _RESOURCE_DICTS.get(id(resource))
    if cached is None:
        if len(_RESOURCE_DICTS) > 16:
            _RESOURCE_DICTS.clear()
        built = {k: v for k, v in resource.attributes.items() if not k.startswith("telemetry.")}
        cached = _RESOURCE_DICTS[id(resource)] = (resource, built)
    return cached[1]


def setup_tracing(service: str, *, version: str, color: str, span_file: str = "") -> TracerProvider:
    """Install the process-wide tracer provider for `service` and return it (call shutdown on exit)."""
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "finmesh",
            "service.version": version,
            "deployment.color": color,
        }
    )
    provider = TracerProvider(resource=resource)
    exporter = _choose_exporter(span_file)
    if exporter is not None:
        masked = exporter if isinstance(exporter, JsonlSpanExporter) else MaskingExporter(exporter)
        provider.add_span_processor(BatchSpanProcessor(masked))
    trace.set_tracer_provider(provider)
    install_propagator()
    return provider


def install_propagator() -> None:
    """Propagate W3C trace context and baggage with FinmeshPropagator, unless OTEL_PROPAGATORS asks otherwise.

    Same headers and contexts as OTel's default "tracecontext,baggage", at a fraction of the CPU per hop;
    any other OTEL_PROPAGATORS setting (b3, jaeger, none...) keeps what OTel configured from it.
    """
    configured = [name.strip() for name in os.environ.get("OTEL_PROPAGATORS", "tracecontext,baggage").split(",")]
    if configured == ["tracecontext", "baggage"]:
        propagate.set_global_textmap(FinmeshPropagator())


def _choose_exporter(span_file: str) -> SpanExporter | None:
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if span_file:
        return JsonlSpanExporter(span_file, mask=True)
    return None


def inject_context() -> dict[str, str]:
    """The current W3C trace context as a carrier dict (traceparent, tracestate)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: dict[str, str]) -> Any:
    return propagate.extract(carrier)

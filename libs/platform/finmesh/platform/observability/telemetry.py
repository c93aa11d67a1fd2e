"""OpenTelemetry tracing: one provider per process, to OTLP and/or a local JSONL span file, PII-masked."""

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

from finmesh.platform.observability.propagation import FinmeshPropagator
from finmesh.platform.observability.resource import resource_for
from finmesh.platform.privacy.pii import SENSITIVE_KEYS, mask_text, mask_value


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
        lines = "".join(span_to_json(s, mask=self._mask) + "\n" for s in spans)
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


# Attribute keys the platform sets (rpc_tracing, outbox) with a handful of values each (service, method and
# topic names): masking such a value is a pure function of it, so its result is memoized instead of
# scanned by the PII patterns on every span. Every other string is masked as before, every time.
_PLATFORM_KEYS = frozenset(
    {
        "rpc.system",
        "rpc.system.name",
        "rpc.service",
        "rpc.method",
        "rpc.response.status_code",
        "error.type",
        "server.address",
        "messaging.system",
        "messaging.operation.type",
        "messaging.destination.name",
    }
)
_MASKED_PLATFORM_VALUES: dict[str, str] = {}
_PLAIN_NUMBERS = (int, float, bool)


def _masked_attributes(attributes: Any) -> dict[str, Any]:
    masked: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        kind = type(value)
        if kind in _PLAIN_NUMBERS and key.lower() not in SENSITIVE_KEYS:
            masked[key] = value  # what mask_value returns for a number under a non-sensitive key
        elif kind is str and key in _PLATFORM_KEYS:
            masked[key] = _masked_platform_value(value)
        else:
            masked[key] = mask_value(key, value)
    return masked


def _masked_platform_value(value: str) -> str:
    masked = _MASKED_PLATFORM_VALUES.get(value)
    if masked is None:
        if len(_MASKED_PLATFORM_VALUES) >= 1024:
            _MASKED_PLATFORM_VALUES.clear()
        masked = _MASKED_PLATFORM_VALUES[value] = mask_text(value)
    return masked


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


# One encoder for every span: json.dumps with options builds a new encoder per call.
_ENCODE = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
_JSON_NAMES: dict[str, str] = {}  # span name -> its JSON string: a process has a few dozen names


def span_to_json(span: ReadableSpan, *, mask: bool = False) -> str:
    """span_to_dict(span) as one JSON line, without re-encoding what every span of the process shares.

    The resource and the span name are encoded once; only ids, times, status and attributes per span.
    json.loads(span_to_json(s)) == span_to_dict(s) (tests/unit/test_telemetry_export.py).
    """
    ctx = span.context
    parent = span.parent
    attributes = _masked_attributes(span.attributes) if mask else dict(span.attributes or {})
    parent_id = f'"{parent.span_id:016x}"' if parent else "null"
    links = ",".join(
        f'{{"trace_id":"{link.context.trace_id:032x}","span_id":"{link.context.span_id:016x}"}}' for link in span.links
    )
    return (
        f'{{"trace_id":"{ctx.trace_id:032x}","span_id":"{ctx.span_id:016x}",'
        f'"parent_span_id":{parent_id},'
        f'"name":{_json_name(span.name)},"kind":"{span.kind.name}",{_resource_json(span.resource)},'
        f'"start_ns":{_json_int(span.start_time)},"end_ns":{_json_int(span.end_time)},'
        f'"status":"{span.status.status_code.name}","attributes":{_ENCODE(attributes)},"links":[{links}]}}'
    )


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _json_name(name: str) -> str:
    encoded = _JSON_NAMES.get(name)
    if encoded is None:
        if len(_JSON_NAMES) >= 1024:
            _JSON_NAMES.clear()
        encoded = _JSON_NAMES[name] = _ENCODE(name)
    return encoded


# id(resource) -> (resource, its dict, its '"service":...,"resource":{...}' JSON): a process has one
# resource, so build these once, not per span (keyed by identity because Resource hashes by serialising
# its attributes; holding it keeps the id valid).
_RESOURCE_DICTS: dict[int, tuple[Resource, dict[str, Any], str]] = {}


def _resource_entry(resource: Resource) -> tuple[Resource, dict[str, Any], str]:
    cached = _RESOURCE_DICTS.get(id(resource))
    if cached is None:
        if len(_RESOURCE_DICTS) > 16:
            _RESOURCE_DICTS.clear()
        built = {k: v for k, v in resource.attributes.items() if not k.startswith("telemetry.")}
        service = resource.attributes.get("service.name", "")
        encoded = f'"service":{_ENCODE(service)},"resource":{_ENCODE(built)}'
        cached = _RESOURCE_DICTS[id(resource)] = (resource, built, encoded)
    return cached


def _resource_dict(resource: Resource) -> dict[str, Any]:
    return _resource_entry(resource)[1]


def _resource_json(resource: Resource) -> str:
    return _resource_entry(resource)[2]


def setup_tracing(service: str, *, version: str, color: str, span_file: str = "") -> TracerProvider:
    """Install the process-wide tracer provider for `service` and return it (call shutdown on exit)."""
    provider = TracerProvider(resource=resource_for(service, version=version, color=color))
    for exporter in span_exporters(span_file):
        provider.add_span_processor(BatchSpanProcessor(exporter))
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


def span_exporters(span_file: str) -> list[SpanExporter]:
    """Every exporter that applies, each masking personal data: OTLP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
    is set, and the JSONL span file when one is configured. Both at once is the usual local setup with a
    collector: `finmesh trace` reads the file whatever else receives the spans. Each gets its own batch
    processor, so a slow or absent collector never holds up the file."""
    exporters: list[SpanExporter] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporters.append(MaskingExporter(OTLPSpanExporter()))
    if span_file:
        exporters.append(JsonlSpanExporter(span_file, mask=True))
    return exporters


def inject_context() -> dict[str, str]:
    """The current W3C trace context as a carrier dict (traceparent, tracestate)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: dict[str, str]) -> Any:
    return propagate.extract(carrier)

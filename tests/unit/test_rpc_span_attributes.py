"""rpc_tracing's spans carry exactly the attributes the SDK's own start_span(attributes=...) gives them."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from finmesh.platform.observability.rpc_tracing import ClientSpans, _start_span, rpc_attributes

METHOD = "/finmesh.payments.v1.PaymentsService/CreatePayment"


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class _AttributeSampler(sampling.Sampler):
    """A sampler that decides on attributes: it must see them when the span starts."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> sampling.SamplingResult:
        self.seen.append(dict(attributes or {}))
        return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, None, None)

    def get_description(self) -> str:
        return "attribute sampler"


def _provider(**kwargs: Any) -> tuple[TracerProvider, _Keep]:
    keep = _Keep()
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(SimpleSpanProcessor(keep))
    return provider, keep


def _both_ways(provider: TracerProvider, keep: _Keep, attributes: dict[str, Any]) -> tuple[Any, Any]:
    tracer = provider.get_tracer("finmesh.grpc")
    _start_span(tracer, provider, "ours", attributes, kind=SpanKind.SERVER).end()
    tracer.start_span("sdk", kind=SpanKind.SERVER, attributes=attributes).end()
    ours, sdk = keep.spans[-2:]
    return ours, sdk


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"sampler": sampling.ALWAYS_ON},
        {"sampler": sampling.ParentBasedTraceIdRatio(1.0)},
        {"span_limits": SpanLimits(max_span_attribute_length=5)},
        {"span_limits": SpanLimits(max_span_attributes=2)},
    ],
)
@pytest.mark.parametrize(
    "attributes",
    [
        rpc_attributes(METHOD),
        {**rpc_attributes(METHOD), "server.address": "risk", "server.port": 50051},  # an int, as the SDK keeps it
        {"rpc.system": "grpc", "count": 3, "tags": ("a", "b")},
        {"rpc.system": "grpc", "ok": True, "ratio": 0.5},  # a bool and a float: the SDK's path
        {"": "empty key", "rpc.method": "M"},
    ],
)
def test_attributes_match_the_sdk(kwargs: dict[str, Any], attributes: dict[str, Any]) -> None:
    ours, sdk = _both_ways(*_provider(**kwargs), attributes)
    assert list(ours.attributes.items()) == list(sdk.attributes.items())
    assert ours.dropped_attributes == sdk.dropped_attributes
    assert ours.kind == sdk.kind


def test_a_sampler_that_reads_attributes_still_sees_them_at_start() -> None:
    sampler = _AttributeSampler()
    provider, keep = _provider(sampler=sampler)
    ours, sdk = _both_ways(provider, keep, rpc_attributes(METHOD))
    assert sampler.seen == [rpc_attributes(METHOD)] * 2
    assert ours.attributes == sdk.attributes


def test_client_spans_keep_the_rpc_conventions() -> None:
    provider, keep = _provider()
    spans = ClientSpans(provider)
    span, carrier = spans.start(METHOD)
    spans.finish(span, grpc.StatusCode.NOT_FOUND)
    exported = keep.spans[-1]
    assert exported.name == METHOD.lstrip("/") and exported.kind is SpanKind.CLIENT
    assert dict(exported.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "finmesh.payments.v1.PaymentsService",
        "rpc.method": "CreatePayment",
        "rpc.grpc.status_code": 5,
    }
    assert carrier["traceparent"].split("-")[2] == f"{exported.context.span_id:016x}"

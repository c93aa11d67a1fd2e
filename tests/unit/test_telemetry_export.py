"""The JSONL span export: span_to_json is span_to_dict as JSON, and masks exactly as strongly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from finmesh.platform.observability.telemetry import JsonlSpanExporter, span_to_dict, span_to_json
from finmesh.platform.privacy.pii import mask_value

PHONE = "13812345678"
ATTRIBUTE_SETS: list[dict[str, Any]] = [
    {
        "rpc.system": "grpc",
        "rpc.service": "finmesh.payments.v1.PaymentsService",
        "rpc.method": "CreatePayment",
        "rpc.grpc.status_code": 0,
    },
    {
        "rpc.method": f"Call {PHONE}",
        "rpc.service": "a@example.com",
        "messaging.destination.name": "6222020200112233445",
    },
    {"phone": PHONE, "code": 123456, "otp": True, "token": 0.5, "password": "", "email": "x"},
    {"note": "card 6222020200112233445 and Bearer abcdefghijkl", "count": 3, "ratio": 0.25, "ok": False},
    {"tags": ("a", PHONE), "ids": (1, 2), "名字": "张三丰 13912345678", "messaging.message.id": "evt-1"},
    {},
]


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _spans() -> list[ReadableSpan]:
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc-ü", "deployment.color": "blue"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("t")
    for attributes in ATTRIBUTE_SETS:
        with tracer.start_as_current_span('parent "quoted" ü', kind=SpanKind.CLIENT) as parent:
            link = Link(parent.get_span_context())
            span = tracer.start_span("finmesh.x.v1.S/M", kind=SpanKind.SERVER, attributes=attributes, links=[link])
            span.set_status(Status(StatusCode.ERROR, "boom"))
            span.end()
    return keep.spans


@pytest.mark.parametrize("mask", [True, False])
def test_span_to_json_is_span_to_dict_as_json(mask: bool) -> None:
    spans = _spans()
    assert len(spans) == 2 * len(ATTRIBUTE_SETS)
    for span in spans:
        assert json.loads(span_to_json(span, mask=mask)) == json.loads(json.dumps(span_to_dict(span, mask=mask)))


def test_masked_attributes_are_what_mask_value_gives_for_every_key() -> None:
    for span in _spans():
        exported = json.loads(span_to_json(span, mask=True))["attributes"]
        expected = {k: mask_value(k, v) for k, v in (span.attributes or {}).items()}
        assert exported == json.loads(json.dumps(expected))
        assert PHONE not in json.dumps(exported)


def test_platform_keys_are_still_masked_when_they_carry_personal_data() -> None:
    span = next(s for s in _spans() if (s.attributes or {}).get("rpc.method", "").startswith("Call"))
    exported = json.loads(span_to_json(span, mask=True))["attributes"]
    assert exported["rpc.method"] == "Call ****"
    assert exported["rpc.service"] == "***@***"
    assert "6222020200112233445" not in exported["messaging.destination.name"]


def test_the_exporter_writes_one_masked_json_line_per_span(tmp_path: Any) -> None:
    path = tmp_path / "spans.jsonl"
    spans = _spans()
    JsonlSpanExporter(path, mask=True).export(spans)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [json.loads(span_to_json(s, mask=True)) for s in spans]
    assert PHONE not in path.read_text(encoding="utf-8")
    assert trace.get_tracer_provider() is not None

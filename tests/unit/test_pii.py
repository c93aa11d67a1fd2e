"""Personal data never survives into log text or span attributes."""

from __future__ import annotations

from finmesh.platform.privacy.pii import mask_middle, mask_text, mask_value


def test_identity_numbers_phones_emails_and_cards_are_masked() -> None:
    text = (
        "user 11010519491231002X phone +8613800138000 or 13800138000, "
        "mail a.b+c@example.com card 6222021234567890123 trace 4bf92f3577b34da6a3ce929d0e0e4736"
    )
    masked = mask_text(text)
    for secret in ("11010519491231002X", "+8613800138000", "13800138000", "a.b+c@example.com", "6222021234567890123"):
        assert secret not in masked
    assert "4bf92f3577b34da6a3ce929d0e0e4736" in masked  # trace ids stay readable


def test_sensitive_keys_are_hidden_whatever_their_value() -> None:
    event = {"password": "hunter2hunter2", "nested": {"token": "abc"}, "amount_minor_units": 12345}
    assert mask_value("event", event) == {"password": "***", "nested": {"token": "***"}, "amount_minor_units": 12345}


def test_mask_middle_keeps_ends() -> None:
    assert mask_middle("11010519491231002X", 4, 4) == "1101**********002X"


def test_span_attributes_events_and_status_are_masked_before_export() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode

    from finmesh.platform.observability.telemetry import MaskingExporter

    sink = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(MaskingExporter(sink)))
    with provider.get_tracer("test").start_as_current_span("register", record_exception=False) as span:
        span.set_attribute("enduser.phone", "13800138000")
        span.record_exception(ValueError("bad id 11010519491231002X for a.b@example.com"))
        span.set_status(Status(StatusCode.ERROR, "phone 13800138000 refused"))
    (exported,) = sink.get_finished_spans()
    text = repr(exported.attributes) + repr([e.attributes for e in exported.events]) + exported.status.description
    for secret in ("13800138000", "11010519491231002X", "a.b@example.com"):
        assert secret not in text
    assert exported.events and exported.events[0].name == "exception"


def test_the_span_file_is_masked_while_written(tmp_path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from finmesh.platform.observability.telemetry import JsonlSpanExporter

    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path, mask=True)))
    with provider.get_tracer("test").start_as_current_span("login") as span:
        span.set_attributes({"phone": "13800138000", "note": "mail a.b@example.com", "rpc.method": "Login"})
    text = path.read_text()
    assert "13800138000" not in text and "a.b@example.com" not in text
    assert '"rpc.method": "Login"' in text

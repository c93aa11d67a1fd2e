"""Spans of the broker hop, after the OpenTelemetry messaging conventions (messaging.system=rabbitmq).

- `publish <exchange>` (PRODUCER, messaging.operation.type=send): one per message. Its context goes in the
  message's headers (W3C traceparent/tracestate), so the consumer continues from it.
- `process <exchange>` (CONSUMER, messaging.operation.type=process): a message handled alone is a child of its
  publish span (and links it, as the conventions ask), so the trace that wrote the event shows the
  asynchronous hop; a batch of messages is a span of its own linking every message's publish span, as the
  relay's batch send does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from finmesh.platform.observability.telemetry import extract_context

_tracer = trace.get_tracer("finmesh.messaging.rabbitmq")

SYSTEM = {"messaging.system": "rabbitmq"}


def publish_span(exchange: str, routing_key: str, message_id: str, parent: Any) -> Any:
    """The PRODUCER span of one message; `parent` is the context to continue (None: the current one)."""
    return _tracer.start_as_current_span(
        f"publish {exchange}",
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        attributes={
            **SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": exchange,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "messaging.message.id": message_id,
        },
    )


def _carrier(headers: Mapping[str, Any]) -> dict[str, str]:
    carrier = {}
    for key in ("traceparent", "tracestate"):
        value = headers.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            carrier[key] = value
    return carrier


def _link(headers: Mapping[str, Any], message_id: str) -> trace.Link | None:
    context = trace.get_current_span(extract_context(_carrier(headers))).get_span_context()
    return trace.Link(context, {"messaging.message.id": message_id}) if context.is_valid else None


def process_span(queue: str, messages: Sequence[tuple[str, str, int, Mapping[str, Any]]]) -> Any:
    """The CONSUMER span around handling `messages`: (exchange, message id, delivery tag, headers) each."""
    attributes: dict[str, Any] = {
        **SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.subscription.name": queue,
    }
    links = [link for exchange, message_id, _, headers in messages if (link := _link(headers, message_id))]
    if len(messages) == 1:
        exchange, message_id, tag, headers = messages[0]
        attributes.update(
            {
                "messaging.destination.name": exchange,
                "messaging.message.id": message_id,
                "messaging.rabbitmq.message.delivery_tag": tag,
            }
        )
        return _tracer.start_as_current_span(
            f"process {exchange}",
            context=extract_context(_carrier(headers)),
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        )
    attributes["messaging.batch.message_count"] = len(messages)
    return _tracer.start_as_current_span(
        f"process {queue}",
        context=otel_context.Context(),
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    )

"""A real OTLP/gRPC trace receiver on loopback that keeps every span with its resource attributes.

The drill points the services' OTel exporters here (OTEL_EXPORTER_OTLP_ENDPOINT),
so it sees what a collector in the cluster would see: the resource of each
span, where deployment.color and service.version live: the drill proves the
export path production uses, not only the local JSONL span files.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class CollectedSpan:
    service: str
    color: str
    version: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    ok: bool  # status not ERROR
    # The span's attributes and its whole resource, for tests of the semantic conventions (tests/load).
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)


def _value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[CollectedSpan] = []
        self.lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        batch = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    batch.append(
                        CollectedSpan(
                            service=str(resource.get("service.name", "")),
                            color=str(resource.get("deployment.color", "")),
                            version=str(resource.get("service.version", "")),
                            name=span.name,
                            kind=trace_pb2.Span.SpanKind.Name(span.kind),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            ok=span.status.code != trace_pb2.Status.STATUS_CODE_ERROR,
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                            resource=resource,
                        )
                    )
        with self.lock:
            self.spans.extend(batch)
        return trace_service_pb2.ExportTraceServiceResponse()


class SpanCollector:
    """Start it, hand `endpoint` to the services, read `spans` after they exited (their exporters flush on exit)."""

    def __init__(self) -> None:
        self._receiver = _Receiver()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._receiver, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SpanCollector:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)

    @property
    def spans(self) -> list[CollectedSpan]:
        with self._receiver.lock:
            return list(self._receiver.spans)

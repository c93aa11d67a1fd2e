"""RPC metrics after the OpenTelemetry semantic conventions: call durations on servers and mesh clients,
calls in flight, refusals.

- `rpc.server.call.duration` and `rpc.client.call.duration` (seconds, histograms; Prometheus:
  `rpc_server_call_duration_seconds`, `rpc_client_call_duration_seconds`), by `rpc.system.name`,
  `rpc.service` (the gRPC service), `rpc.method` (its method) and `rpc.response.status_code` (the gRPC code's
  name: "OK", "UNAVAILABLE"). The duration metrics and `rpc.response.status_code` follow the RPC conventions
  since semconv 1.38; `rpc.service` and the short `rpc.method` are kept from 1.37, as the spans still carry
  them, so one query language serves both.
- `finmesh.rpc.server.active_calls`: calls a server's handlers hold now, by service and method.
- `finmesh.rpc.server.refusals`: calls refused before or instead of their work, by `reason`
  (RATE_LIMITED and the other RESOURCE_EXHAUSTED reasons, DEADLINE_EXCEEDED).

Request and response sizes are not recorded: protobuf knows a message's size only by serialising it again.
Per call: one histogram record on each side; the attribute dicts are built once per method and code.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import grpc
from opentelemetry.metrics import CallbackOptions, Observation

from finmesh.platform.observability.metrics import LATENCY_BUCKETS, meter

_meter = meter("finmesh.rpc")
_server_duration = _meter.create_histogram(
    "rpc.server.call.duration",
    unit="s",
    description="Duration of RPCs handled by this server, until the handler answered or failed.",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
)
_client_duration = _meter.create_histogram(
    "rpc.client.call.duration",
    unit="s",
    description="Duration of RPCs this process made to other finmesh services, until the answer or failure.",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
)
_refusals = _meter.create_counter(
    "finmesh.rpc.server.refusals",
    unit="{call}",
    description="Calls refused by this server before their work: rate limits, overload, expired deadlines.",
)

# (rpc.service, rpc.method) -> calls in the handlers now. Plain ints read at collection: a record per call
# start and end (an up-down counter) would double the cost of the duration histogram.
_active: Counter[tuple[str, str]] = Counter()


def _observe_active(_options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(count, {"rpc.system.name": "grpc", "rpc.service": service, "rpc.method": method})
        for (service, method), count in list(_active.items())
    ]


_meter.create_observable_up_down_counter(
    "finmesh.rpc.server.active_calls",
    callbacks=[_observe_active],
    unit="{call}",
    description="RPCs whose handlers are running on this server now.",
)


# Refusal reasons a server gives by itself: the per-caller rate limit, identity's login throttle, deadlines.
REFUSAL_REASONS = ("RATE_LIMITED", "TOO_MANY_ATTEMPTS", "DEADLINE_EXCEEDED")


def start_refusal_series() -> None:
    """Export each refusal reason at zero from the start, so rate() and alerts see the first refusal.
    Call once the process's meter provider is installed (records before it are dropped)."""
    for reason in REFUSAL_REASONS:
        _refusals.add(0, {"reason": reason})


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


class _MethodAttributes:
    """The attribute dicts of one method, one per status code, built on first use."""

    __slots__ = ("_by_code", "_method", "_service")

    def __init__(self, full_method: str) -> None:
        self._service, self._method = _split(full_method)
        self._by_code: dict[grpc.StatusCode, dict[str, str]] = {}

    def for_code(self, code: grpc.StatusCode) -> dict[str, str]:
        attributes = self._by_code.get(code)
        if attributes is None:
            attributes = self._by_code[code] = {
                "rpc.system.name": "grpc",
                "rpc.service": self._service,
                "rpc.method": self._method,
                "rpc.response.status_code": code.name,
            }
        return attributes


class ServerCallMetrics:
    """What a server records for one of its methods (the servicer guard holds one per method)."""

    __slots__ = ("_attributes", "_key")

    def __init__(self, full_method: str) -> None:
        self._attributes = _MethodAttributes(full_method)
        self._key = _split(full_method)

    def start(self) -> float:
        _active[self._key] += 1
        return time.perf_counter()

    def finish(self, started: float, code: grpc.StatusCode, reason: str = "") -> None:
        """Record a call that started at `started` (perf_counter) and ended with `code` (and ErrorInfo reason)."""
        _server_duration.record(time.perf_counter() - started, self._attributes.for_code(code))
        _active[self._key] -= 1
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            _refusals.add(1, {"reason": reason or "RESOURCE_EXHAUSTED"})
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            _refusals.add(1, {"reason": "DEADLINE_EXCEEDED"})


class ClientCallMetrics:
    """What a mesh client records per call: the duration by callee method and the code it got."""

    def __init__(self) -> None:
        self._methods: dict[str, _MethodAttributes] = {}

    def record(self, method: str, started: float, code: grpc.StatusCode) -> None:
        attributes = self._methods.get(method)
        if attributes is None:
            attributes = self._methods[method] = _MethodAttributes(method)
        _client_duration.record(time.perf_counter() - started, attributes.for_code(code))


def ended_code(context: Any) -> grpc.StatusCode:
    """The code a handler cancelled by gRPC ended with: DEADLINE_EXCEEDED when its deadline had passed."""
    remaining = context.time_remaining() if context is not None else None
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED

"""Lean gRPC tracing: a server span per RPC and a client span per call, W3C context in metadata.

Why not the stock opentelemetry-instrumentation-grpc interceptors: on a
3-hop no-op chain they cost ~40% of throughput here (bench/tracing.py),
mostly per-call handler re-wrapping, a proxy around every servicer context
and peer-string parsing; their server interceptor also breaks stream-stream
RPCs. These spans follow the OTel RPC conventions at a fraction of the cost:
span names `package.Service/Method`; ERROR status for server faults on
servers, for every non-OK code on clients; by default the attributes of semconv
1.37 (rpc.system / rpc.service / rpc.method / rpc.grpc.status_code), and the
stable ones (rpc.system.name, the full rpc.method, rpc.response.status_code,
error.type) when OTEL_SEMCONV_STABILITY_OPT_IN says `rpc` (instead) or
`rpc/dup` (both), as the conventions' migration plan asks of an existing
instrumentation. Either way: server.address / server.port (the channel's target
on clients, the bound address on servers) and network.peer.address / port (the
caller, on servers). Server spans are opened by the servicer guard
(rpc.guard.guarded), which wraps each method once at registration; health and
reflection calls are not traced.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import SpanKind, Status, StatusCode

_tracer = trace.get_tracer("finmesh.grpc")

# Codes that mean the server failed (OTel semantic conventions for gRPC server spans).
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_PROPAGATED = ("traceparent", "tracestate", "baggage")
_ROOT = otel_context.Context()


@dataclass(frozen=True)
class Conventions:
    """Which RPC semantic conventions the spans carry: semconv 1.37's (`old`), the stable ones, or both."""

    old: bool = True
    stable: bool = False

    @classmethod
    def from_env(cls, value: str | None = None) -> Conventions:
        """From OTEL_SEMCONV_STABILITY_OPT_IN (a comma-separated list): `rpc/dup` wins over `rpc`; neither: old."""
        raw = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "") if value is None else value
        tokens = {token.strip() for token in raw.split(",")}
        if "rpc/dup" in tokens:
            return cls(old=True, stable=True)
        if "rpc" in tokens:
            return cls(old=False, stable=True)
        return cls()


# Read once per process, as the SDK reads its OTEL_* settings: a process emits one set of names all its life.
CONVENTIONS = Conventions.from_env()


def _attribute_blind(sampler: Any) -> bool:
    """Whether the sampler decides without looking at the span's attributes (the SDK's built-in ones)."""
    if isinstance(sampler, sampling.ParentBased):
        return all(
            _attribute_blind(delegate)
            for delegate in (
                sampler._root,
                sampler._remote_parent_sampled,
                sampler._remote_parent_not_sampled,
                sampler._local_parent_sampled,
                sampler._local_parent_not_sampled,
            )
        )
    return type(sampler) in (
        sampling.StaticSampler,
        sampling._AlwaysOn,
        sampling._AlwaysOff,
        sampling.TraceIdRatioBased,
    )


# id(provider) -> (provider, attribute-blind sampler?): decided once per provider (holding it keeps the id valid).
_BLIND_PROVIDERS: dict[int, tuple[Any, bool]] = {}


def _attributes_after_start(provider: Any) -> bool:
    cached = _BLIND_PROVIDERS.get(id(provider))
    if cached is None:
        if len(_BLIND_PROVIDERS) > 16:
            _BLIND_PROVIDERS.clear()
        blind = _attribute_blind(getattr(provider, "sampler", None))
        cached = _BLIND_PROVIDERS[id(provider)] = (provider, blind)
    return cached[1]


def _start_span(tracer: Any, provider: Any, name: str, attributes: dict[str, str], **kwargs: Any) -> Any:
    """tracer.start_span(name, attributes=attributes, ...) at less CPU, with the same span.

    The SDK validates every attribute of every span one by one (~1/3 of starting a span). The platform's
    rpc.* attributes are plain strings built once per method, valid as they are, so where nothing can tell
    the difference (the sampler ignores attributes, the span has no value-length limit and room for them)
    they go straight into the span's attribute dict. Anything else: the SDK's own path.
    """
    if not _attributes_after_start(provider):
        return tracer.start_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False, **kwargs
        )
    span = tracer.start_span(name, record_exception=False, set_status_on_exception=False, **kwargs)
    bounded = getattr(span, "_attributes", None)
    if (
        type(bounded) is BoundedAttributes
        and bounded.max_value_len is None
        and not bounded._immutable
        and not bounded._dict
        and (bounded.maxlen is None or len(attributes) <= bounded.maxlen)
        and all(type(key) is str and key and type(value) in _PLAIN for key, value in attributes.items())
    ):
        bounded._dict.update(attributes)
    else:
        span.set_attributes(attributes)  # validated (or ignored by a non-recording span) as the SDK does
    return span


def rpc_attributes(full_method: str, conventions: Conventions | None = None) -> dict[str, Any]:
    """Static span attributes for "/pkg.Service/Method" (computed once per method).

    In `rpc/dup` mode rpc.method carries the stable, fully-qualified value: one key cannot hold both, and the
    short one is still in the span name and rpc.service (OpenTelemetry's Java instrumentation does the same).
    """
    conventions = conventions or CONVENTIONS
    qualified = full_method.lstrip("/")
    service, _, method = qualified.partition("/")
    attributes: dict[str, Any] = {}
    if conventions.old:
        attributes.update({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
    if conventions.stable:
        attributes.update({"rpc.system.name": "grpc", "rpc.method": qualified})
    return attributes


# Attribute values _start_span may put into a span as they are (what the SDK would keep unchanged).
_PLAIN = (str, int)
# gRPC's default port for a target without one (its naming doc: dns, ipv4, ipv6, xds).
_DEFAULT_PORT = 443


def server_endpoint(target: str) -> dict[str, Any]:
    """server.address and server.port of a gRPC channel target, as the client names the server.

    "host:port", "dns:[//authority/]host[:port]", "ipv4:a:p[,b:p]", "ipv6:[a]:p", "unix:path",
    "unix-abstract:name", "xds:///name". A list of addresses is named by its first (the span cannot know
    which one the balancer picked); a socket path has no port.
    """
    scheme, sep, rest = target.partition(":")
    if not sep or scheme not in ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "xds", "vsock"):
        scheme, rest = "dns", target  # no scheme: gRPC resolves it by DNS
    if scheme in ("unix", "unix-abstract"):
        path = rest[2:] if rest.startswith("//") else rest
        return {"server.address": unquote(path)} if path else {}
    if rest.startswith("//"):
        rest = rest[2:].partition("/")[2]  # drop the authority (a DNS server, never the callee)
    first = rest.split(",")[0]
    host, port = _host_port(unquote(first))
    if not host:
        return {}
    return {"server.address": host, "server.port": port if port is not None else _DEFAULT_PORT}


def _host_port(text: str) -> tuple[str, int | None]:
    """("host", port) of "host:port", "[v6]:port", "host", "[v6]", or a bare IPv6 address."""
    if text.startswith("["):
        host, _, after = text[1:].partition("]")
        return host, int(after[1:]) if after.startswith(":") and after[1:].isdigit() else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port) if port.isdigit() else None
    return text, None  # a name without a port, or an IPv6 address without brackets


def peer_attributes(peer: str) -> dict[str, Any]:
    """network.peer.address / port of a server call's peer ("ipv4:10.0.0.7:51234", "ipv6:%5B::1%5D:51234",
    "unix:/run/x.sock"); {} for what it cannot read."""
    found = _PEERS.get(peer)
    if found is None:
        scheme, _, rest = peer.partition(":")
        found = {}
        if scheme in ("ipv4", "ipv6"):
            host, port = _host_port(unquote(rest))
            if host:
                found = {"network.peer.address": host}
                if port is not None:
                    found["network.peer.port"] = port
        elif scheme == "unix" and rest:
            found = {"network.peer.address": unquote(rest)}
        if len(_PEERS) >= 1024:
            _PEERS.clear()
        _PEERS[peer] = found  # a peer is one connection: it makes many calls
    return found


_PEERS: dict[str, dict[str, Any]] = {}


class ServerEndpoint:
    """server.address / server.port of a server's spans, known only once its port is bound.

    The guard registers each method's static attributes here at registration; `bind` adds the two keys to
    all of them, so a call pays nothing for them. A wildcard bind address (0.0.0.0, [::]) names no server:
    the host name does (the pod's name in Kubernetes).
    """

    def __init__(self) -> None:
        self._attributes: list[dict[str, Any]] = []
        self._bound: dict[str, Any] = {}

    def register(self, attributes: dict[str, Any]) -> dict[str, Any]:
        self._attributes.append(attributes)
        attributes.update(self._bound)
        return attributes

    def bind(self, host: str, port: int) -> None:
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        self._bound = {"server.address": host, "server.port": port}
        for attributes in self._attributes:
            attributes.update(self._bound)


@contextmanager
def server_span(name: str, attributes: dict[str, Any], context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[Any]:
    """A SERVER span continuing the caller's trace from the request metadata.

    The span is made current together with the rest of the caller's context, so the handler sees the
    caller's baggage (e.g. the synthetic-traffic mark, finmesh.platform.observability.synthetic) and outgoing calls
    forward it. One attach instead of start_as_current_span's context manager: cheaper per call.
    """
    carrier = {key: value for key, value in (context.invocation_metadata() or ()) if key in _PROPAGATED}
    parent = propagate.extract(carrier) if carrier else _ROOT
    peer = peer_attributes(context.peer() or "")
    if peer:
        attributes = {**attributes, **peer}
    span = _start_span(_tracer, trace.get_tracer_provider(), name, attributes, context=parent, kind=SpanKind.SERVER)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    finally:
        otel_context.detach(token)
        span.end()


@contextmanager
def batch_item_span(name: str, traceparent: str, tracestate: str, batch: trace.Link) -> Iterator[Any]:
    """A span for one item of a batch call, current while the item is worked on.

    The item carried its own W3C context, so its span joins the item's trace (e.g. the payment's) and links
    the batch call's span, after OTel's convention for batch messaging. An item without context stays in the
    batch call's trace.
    """
    parent = (
        propagate.extract({"traceparent": traceparent, "tracestate": tracestate})
        if traceparent
        else otel_context.get_current()
    )
    span = _tracer.start_span(
        name,
        context=parent,
        links=[batch] if batch.context.is_valid else None,
        record_exception=False,
        set_status_on_exception=False,
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    finally:
        otel_context.detach(token)
        span.end()


def finish_server_span(span: Any, code: grpc.StatusCode, conventions: Conventions | None = None) -> None:
    _set_code(span, code, code in SERVER_FAULTS, conventions or CONVENTIONS)


def _set_code(span: Any, code: grpc.StatusCode, failed: bool, conventions: Conventions) -> None:
    """The call's status code in the conventions' attributes; ERROR status (and, stable, error.type) if `failed`."""
    if conventions.old:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
    if conventions.stable:
        span.set_attribute("rpc.response.status_code", code.name)
        if failed:
            span.set_attribute("error.type", code.name)
    if failed:
        span.set_status(Status(StatusCode.ERROR, code.name))


class ClientSpans:
    """CLIENT spans for outgoing unary calls and the metadata carrying their W3C context (and the current
    baggage), for channels that trace without an interceptor (see channels.open_channel): grpc.aio runs
    every intercepted call through an extra task and call object, which cost more than the span."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        target: str = "",
        conventions: Conventions | None = None,
    ) -> None:
        self._tracer = trace.get_tracer("finmesh.grpc", tracer_provider=tracer_provider) if tracer_provider else _tracer
        self._provider = tracer_provider
        self._attributes: dict[str, dict[str, Any]] = {}
        self._endpoint = server_endpoint(target) if target else {}
        self._conventions = conventions or CONVENTIONS

    def start(self, method: str) -> tuple[Any, dict[str, str]]:
        """A started span for "/pkg.Service/Method" and the metadata to send with the call."""
        attributes = self._attributes.get(method)
        if attributes is None:
            attributes = self._attributes[method] = {**rpc_attributes(method, self._conventions), **self._endpoint}
        provider = self._provider or trace.get_tracer_provider()
        span = _start_span(self._tracer, provider, method.lstrip("/"), attributes, kind=SpanKind.CLIENT)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier

    def finish(self, span: Any, code: grpc.StatusCode | None) -> None:
        """End the span with the call's status (None: the call never finished, e.g. it was cancelled)."""
        if code is not None:
            _set_code(span, code, code is not grpc.StatusCode.OK, self._conventions)
        span.end()


class TracingClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """ClientSpans as an interceptor, for channels built elsewhere (e.g. the CLI's): `target` as the channel's."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None, *, target: str = "") -> None:
        self._spans = ClientSpans(tracer_provider, target=target)

    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        span, carrier = self._spans.start(method)
        code = None
        try:
            metadata = list(details.metadata or ()) + list(carrier.items())
            details = details._replace(metadata=metadata)  # type: ignore[attr-defined]  # a namedtuple, unlike its stub
            call = await continuation(details, request)
            try:
                response = await call
            except grpc.aio.AioRpcError as error:
                code = error.code()
                raise
            code = grpc.StatusCode.OK
            return response
        finally:
            self._spans.finish(span, code)

"""Outgoing gRPC channels: tracing, metrics, retries only for idempotent methods, deadlines inherited."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any

import grpc

from finmesh.platform.auth.service_tokens import TokenSource, default_token_source
from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability.rpc_metrics import ClientCallMetrics
from finmesh.platform.observability.rpc_tracing import ClientSpans
from finmesh.platform.rpc.tls import TlsFiles, channel_credentials

# Keep part of the caller's budget for what follows the downstream call: after risk times out, payments
# still commits its policy's answer (a hold for review). A fixed 50 ms did not always fit that commit on a
# busy machine, so the caller got DEADLINE_EXCEEDED instead of the policy's answer: a quarter of what is
# left, between 50 and 250 ms.
_DEADLINE_MARGIN_SHARE = 0.25
_DEADLINE_MARGIN_MIN_SECONDS = 0.05
_DEADLINE_MARGIN_MAX_SECONDS = 0.25


def _service_config(idempotent_methods: list[tuple[str, str]], spread: bool = False) -> str:
    """gRPC service config retrying UNAVAILABLE and CANCELLED, for the named (service, method) pairs only.

    `spread`: balance calls round robin over the target's addresses (gRPC's default, pick_first,
    would send them all to the first one)."""
    balancing: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]} if spread else {}
    if not idempotent_methods:
        return json.dumps({"methodConfig": [], **balancing})
    return json.dumps(
        {
            **balancing,
            "methodConfig": [
                {
                    "name": [{"service": service, "method": method} for service, method in idempotent_methods],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        # CANCELLED: a draining callee cancels the calls it holds undispatched when it
                        # stops, instead of refusing them UNAVAILABLE (grpc C-core 1.85,
                        # https://github.com/grpc/grpc/issues/41785). Only idempotent methods are named
                        # here, and our own cancellation never retries (it ends the call).
                        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                    },
                }
            ],
        }
    )


def open_channel(
    target: str,
    settings: ServiceSettings,
    *,
    idempotent_methods: list[tuple[str, str]] | None = None,
    token_source: TokenSource | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `target` with tracing and call metrics, per-method retry policy, mutual TLS when
    FINMESH_TLS_* files are set and, when FINMESH_AUTH_MODE=enforce, this service's token on
    every unary call (see auth_service; MeshChannel adds them)."""
    if token_source is None and settings.auth_mode == "enforce":
        token_source = default_token_source(settings)
    options = [
        # A target naming several addresses (`ipv4:10.0.0.1:50051,10.0.0.2:50051`, replicas without a
        # balancer in front) is spread over them.
        ("grpc.service_config", _service_config(idempotent_methods or [], spread="," in target)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        # gRPC's default reconnect backoff grows to 120 s; after a long outage of
        # the callee that, not our own retry policy, would set the recovery time.
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]
    tls = TlsFiles.from_settings(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    if tls is not None:
        channel = grpc.aio.secure_channel(target, channel_credentials(tls), options=options)
    else:
        channel = grpc.aio.insecure_channel(target, options=options)
    spans = ClientSpans(target=target) if settings.tracing_enabled else None
    metrics = ClientCallMetrics() if settings.metrics_enabled else None
    if spans is None and token_source is None and metrics is None:
        return channel
    return MeshChannel(channel, spans, token_source, metrics)


class MeshChannel(grpc.aio.Channel):
    """A channel whose unary calls carry a CLIENT span's context (and the current baggage) and this service's
    token, and record their duration. Done here rather than by client interceptors: grpc.aio runs every
    intercepted call through an extra task and call object, which on a short call costs more than the span
    itself. Calls return awaitables (`await stub.Method(request)`), as every caller here uses them; other call
    shapes pass through untouched."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        spans: ClientSpans | None,
        tokens: TokenSource | None,
        metrics: ClientCallMetrics | None = None,
    ) -> None:
        self._channel = channel
        self._spans = spans
        self._tokens = tokens
        self._metrics = metrics

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        inner = self._channel.unary_unary(method, request_serializer, response_deserializer, _registered_method)  # type: ignore[call-arg]  # grpc's own 4th, not in its stub
        return _MeshUnaryUnary(inner, method, self._spans, self._tokens, self._metrics)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_stream(*args, **kwargs)

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *_exc_info: Any) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


class _MeshUnaryUnary:
    __slots__ = ("_inner", "_method", "_metrics", "_spans", "_tokens")

    def __init__(
        self,
        inner: Any,
        method: str,
        spans: ClientSpans | None,
        tokens: TokenSource | None,
        metrics: ClientCallMetrics | None,
    ) -> None:
        self._inner = inner
        self._method = method
        self._spans = spans
        self._tokens = tokens
        self._metrics = metrics

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Awaitable[Any]:
        return self._call(request, timeout, list(metadata or ()), credentials, wait_for_ready, compression)

    async def _call(
        self,
        request: Any,
        timeout: float | None,
        metadata: list[Any],
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        if self._tokens is not None:
            token = await self._tokens.token()
            if token:
                metadata.append(("authorization", f"Bearer {token}"))
        span = None
        spans = self._spans
        if spans is not None:
            span, carrier = spans.start(self._method)
            metadata.extend(carrier.items())
        started = time.perf_counter()
        code = None
        try:
            response = await self._inner(
                request,
                timeout=timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise
        else:
            code = grpc.StatusCode.OK
            return response
        finally:
            # A call that never finished (cancelled by our own caller) has no code: no span status, and its
            # duration counts as CANCELLED.
            if self._metrics is not None:
                self._metrics.record(self._method, started, code or grpc.StatusCode.CANCELLED)
            if spans is not None and span is not None:
                spans.finish(span, code)


def remaining_timeout(context: grpc.aio.ServicerContext[Any, Any] | None, default: float) -> float:
    """Timeout for a downstream call: the caller's remaining time (less a margin), capped at `default`.

    Python gRPC does not propagate deadlines by itself.
    """
    if context is None:
        return default
    remaining = context.time_remaining()
    if remaining is None:
        return default
    margin = min(max(remaining * _DEADLINE_MARGIN_SHARE, _DEADLINE_MARGIN_MIN_SECONDS), _DEADLINE_MARGIN_MAX_SECONDS)
    return max(min(default, remaining - margin), 0.001)

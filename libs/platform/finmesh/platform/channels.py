"""Outgoing gRPC channels: tracing, retries only for idempotent methods, deadlines inherited."""

from __future__ import annotations

import json

import grpc

from finmesh.platform.auth_service import BearerTokenInterceptor, TokenSource, default_token_source
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc_tracing import TracingClientInterceptor
from finmesh.platform.tls import TlsFiles, channel_credentials

# Leave a little of the caller's budget for our own reply.
_DEADLINE_MARGIN_SECONDS = 0.05


def _service_config(idempotent_methods: list[tuple[str, str]], spread: bool = False) -> str:
    """gRPC service config retrying UNAVAILABLE, for the named (service, method) pairs only.

    `spread`: balance calls round robin over the target's addresses (gRPC's default, pick_first,
    would send them all to the first one)."""
    balancing = {"loadBalancingConfig": [{"round_robin": {}}]} if spread else {}
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
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def open_channel(
    target: str,
    settings: ServiceSettings,
    *,
    idempotent_methods: list[tuple[str, str]] | None = None,
    token_source: TokenSource | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `target` with tracing, per-method retry policy, mutual TLS when
    FINMESH_TLS_* files are set and, when FINMESH_AUTH_MODE=enforce, this service's token on
    every call (see auth_service)."""
    interceptors: list[grpc.aio.ClientInterceptor] = [TracingClientInterceptor()] if settings.tracing_enabled else []
    if token_source is None and settings.auth_mode == "enforce":
        token_source = default_token_source(settings)
    if token_source is not None:
        interceptors.append(BearerTokenInterceptor(token_source))
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
        return grpc.aio.secure_channel(target, channel_credentials(tls), options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def remaining_timeout(context: grpc.aio.ServicerContext | None, default: float) -> float:
    """Timeout for a downstream call: the caller's remaining time (less a margin), capped at `default`.

    Python gRPC does not propagate deadlines by itself.
    """
    if context is None:
        return default
    remaining = context.time_remaining()
    if remaining is None:
        return default
    return max(min(default, remaining - _DEADLINE_MARGIN_SECONDS), 0.001)

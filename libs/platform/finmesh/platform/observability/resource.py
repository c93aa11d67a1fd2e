"""The OpenTelemetry resource a process's spans and metrics share: which service, version and color."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource


def resource_for(service: str, *, version: str, color: str) -> Resource:
    # deployment.color is ours (no semantic convention names a blue-green color); it splits a rollout's
    # preview from its active color in traces and metrics alike.
    return Resource.create(
        {
            "service.name": service,
            "service.namespace": "finmesh",
            "service.version": version,
            "deployment.color": color,
        }
    )

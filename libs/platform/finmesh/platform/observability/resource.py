"""The OpenTelemetry resource a process's spans and metrics share: which service, version and color."""

from __future__ import annotations

from opentelemetry.sdk.resources import OTELResourceDetector, Resource


def resource_for(service: str, *, version: str, color: str) -> Resource:
    """finmesh's own attributes, under what the environment says.

    Precedence, lowest first: the SDK's defaults and detectors (telemetry.sdk.*, OTEL_EXPERIMENTAL_RESOURCE_DETECTORS);
    finmesh's settings (the service's name, FINMESH_SERVICE_VERSION, FINMESH_DEPLOYMENT_COLOR,
    service.namespace=finmesh); OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME. So an operator's OTEL_* settings
    are never silently overridden, and OTEL_SERVICE_NAME beats a service.name in OTEL_RESOURCE_ATTRIBUTES, as
    the SDK specification ranks them. (Resource.create alone puts code-given attributes above the environment.)
    """
    # deployment.color is ours: no semantic convention names a blue-green color (deployment.environment.name is
    # the environment, e.g. production). It splits a rollout's preview from its active color in traces and
    # metrics alike; the Prometheus label deployment_color comes from it.
    ours = Resource.create(
        {
            "service.name": service,
            "service.namespace": "finmesh",
            "service.version": version,
            "deployment.color": color,
        }
    )
    return ours.merge(OTELResourceDetector().detect())

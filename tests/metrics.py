"""Readings of the metrics in-process services record (tests/conftest.py installs the meter provider).

The provider is process-wide and cumulative, and every test's services share it: assert on the change a
test caused (`readings.delta(...)` or two `value` calls around the action), never on absolute values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

READER = InMemoryMetricReader()


def provider() -> MeterProvider:
    return MeterProvider(metric_readers=[READER])


def _points(name: str) -> Iterator[Any]:
    data = READER.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    yield from metric.data.data_points


def _matches(point: Any, attributes: dict[str, Any]) -> bool:
    return all(point.attributes.get(key) == value for key, value in attributes.items())


def _wanted(attributes: dict[str, Any] | None, simple: dict[str, Any]) -> dict[str, Any]:
    # A keyword like rpc__method would match nothing, and a test asserting a delta of 0 would pass blind.
    assert not any("__" in key for key in simple), f"dotted attribute names go in the dict: {sorted(simple)}"
    return {**(attributes or {}), **simple}


def value(name: str, attributes: dict[str, Any] | None = None, /, **simple: Any) -> float:
    """The sum over the points of counter, up-down counter or gauge `name` whose attributes include these
    (dotted names in the dict: value("rpc.server.call.duration", {"rpc.method": "Assess"}), plain ones as
    keywords: value("finmesh.payments", status="CAPTURED")); for a histogram, its count."""
    wanted = _wanted(attributes, simple)
    total = 0.0
    for point in _points(name):
        if _matches(point, wanted):
            total += point.count if isinstance(point, HistogramDataPoint) else point.value
    return total


def histogram_sum(name: str, attributes: dict[str, Any] | None = None, /, **simple: Any) -> float:
    wanted = _wanted(attributes, simple)
    return sum(p.sum for p in _points(name) if _matches(p, wanted) and isinstance(p, HistogramDataPoint))


def attribute_values(name: str, key: str) -> set[Any]:
    """Every value attribute `key` took on metric `name` (to check labels stay bounded)."""
    return {point.attributes.get(key) for point in _points(name) if key in point.attributes}

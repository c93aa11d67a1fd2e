"""Metrics of the rate limiter's bucket store (finmesh.platform.rpc.shared_buckets).

- `finmesh.ratelimit.backend` (gauge, Prometheus `finmesh_ratelimit_backend`): per `backend` ("redis",
  "local"), how many of this process's limiters use it now: 1 on one and 0 on the other for a server. A pod
  configured for Redis showing `backend="local"` 1 is on its fallback: its limits are per pod.
- `finmesh.ratelimit.fallbacks` (counter, `finmesh_ratelimit_fallbacks_total`): switches from Redis to the
  local buckets, one per outage (not per call), by `reason` (timeout, error).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from finmesh.platform.observability.metrics import meter

BACKENDS = ("redis", "local")


class _HasBackend(Protocol):
    @property
    def backend_in_use(self) -> str: ...


# Weak: a stopped server's limiter leaves the gauge with it.
_stores: weakref.WeakSet[_HasBackend] = weakref.WeakSet()

_meter = meter("finmesh.ratelimit")
_fallbacks = _meter.create_counter(
    "finmesh.ratelimit.fallbacks",
    unit="{switch}",
    description="Switches of a rate limiter from the shared (Redis) buckets to its pod's own, by reason.",
)


def _observe_backend(_options: CallbackOptions) -> Iterable[Observation]:
    counts = dict.fromkeys(BACKENDS, 0)
    for store in list(_stores):
        counts[store.backend_in_use] += 1
    return [Observation(count, {"backend": backend}) for backend, count in counts.items()]


_meter.create_observable_gauge(
    "finmesh.ratelimit.backend",
    callbacks=[_observe_backend],
    unit="{limiter}",
    description="Rate limiters of this process by the bucket store they use now: redis (shared) or local.",
)


def track_backend(store: _HasBackend) -> None:
    """Report `store.backend_in_use` in the backend gauge while the store lives; zero the fallback series."""
    _stores.add(store)
    start_fallback_series()


def start_fallback_series() -> None:
    """Every server exports the fallback counter from its start, at zero on a pod with local buckets only: a
    rate() over it, or an alert on it, needs the series before the first outage."""
    for reason in ("timeout", "error"):
        _fallbacks.add(0, {"reason": reason})


def record_fallback(reason: str) -> None:
    _fallbacks.add(1, {"reason": reason})

"""Connection pool metrics of the platform's engines, as the OTel database conventions name them.

- db.client.connection.count {db.client.connection.pool.name, db.client.connection.state=used|idle}
- db.client.connection.pending_requests {pool.name}: checkouts waiting for a connection now
- db.client.connection.wait_time {pool.name}: how long each checkout took (a new connection's connect included)

The counts are read from the pools when a reader collects (observable instruments): nothing on the hot path.
Pending requests and wait time are measured around each checkout: two clock reads, a dict update and a
histogram record per transaction. The pool name says what the engine is for ("primary", "read"), never the
database's host, name or credentials: every series already carries the service's name.

Only queue pools are measured: PostgreSQL's and an SQLite file's. An in-memory SQLite database keeps one
connection (StaticPool), and SQLite write threads (finmesh.platform.storage.sqlite_thread) one connection
each, outside any pool: neither has waits or a count worth a series.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from functools import cache
from time import perf_counter
from typing import Any, ClassVar

from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy.engine import Engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from finmesh.platform.observability.metrics import LATENCY_BUCKETS, meter

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

_meter = meter("finmesh.platform.storage")
_wait_time = _meter.create_histogram(
    "db.client.connection.wait_time",
    unit="s",
    description="Time it took to obtain a connection from the pool",
    explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
)
# Per pool name: checkouts in progress (waiting on the pool, or opening a connection for it).
_pending: dict[str, int] = {}
# The measured engines: their pool is read at each collection (dispose() replaces an engine's pool).
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


class _MeasuredQueuePool(AsyncAdaptedQueuePool):
    """The async queue pool, timing each checkout. A subclass per pool name (see _pool_class), so the pool an
    engine's dispose() recreates (same class) keeps measuring under the same name."""

    pool_name: ClassVar[str] = ""
    attributes: ClassVar[dict[str, str]] = {}

    def _do_get(self) -> Any:
        name = self.pool_name
        _pending[name] = _pending.get(name, 0) + 1
        start = perf_counter()
        try:
            return super()._do_get()
        finally:
            _pending[name] -= 1
            _wait_time.record(perf_counter() - start, self.attributes)


@cache
def _pool_class(name: str) -> type[_MeasuredQueuePool]:
    return type("MeasuredQueuePool", (_MeasuredQueuePool,), {"pool_name": name, "attributes": {POOL_NAME: name}})


def measure(engine: Engine, name: str) -> None:
    """Report `engine`'s pool under `name` (a queue pool; other pools are left as they are)."""
    pool = engine.pool
    if type(pool) is not AsyncAdaptedQueuePool:
        return
    # The engine built its pool from the URL's dialect (queue pool for PostgreSQL and SQLite files, static for
    # in-memory SQLite); switching the class afterwards keeps that choice with the dialect, where it belongs.
    pool.__class__ = _pool_class(name)
    _pending.setdefault(name, 0)
    _engines.add(engine)


def _connection_counts(_: CallbackOptions) -> Iterable[Observation]:
    totals: dict[str, list[int]] = {}
    for engine in list(_engines):
        pool = engine.pool
        if isinstance(pool, _MeasuredQueuePool):
            counts = totals.setdefault(pool.pool_name, [0, 0])
            counts[0] += pool.checkedout()
            counts[1] += pool.checkedin()
    for name, (used, idle) in totals.items():
        yield Observation(used, {POOL_NAME: name, STATE: "used"})
        yield Observation(idle, {POOL_NAME: name, STATE: "idle"})


def _pending_requests(_: CallbackOptions) -> Iterable[Observation]:
    for name, count in list(_pending.items()):
        yield Observation(count, {POOL_NAME: name})


_meter.create_observable_up_down_counter(
    "db.client.connection.count",
    [_connection_counts],
    unit="{connection}",
    description="Connections of the pool, in use or idle",
)
_meter.create_observable_up_down_counter(
    "db.client.connection.pending_requests",
    [_pending_requests],
    unit="{request}",
    description="Checkouts waiting for a connection of the pool",
)

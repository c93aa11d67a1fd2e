"""The private internals of third-party libraries that finmesh relies on are still there, with the same shape.

The hot path reaches past public APIs in a few places (each for CPU per call, see the modules named below),
and pyproject.toml bounds those libraries to the releases checked. When an upgrade of the lock
(`make lock UPGRADE=...`) moves one of these internals, the test here fails and names the finmesh module that
depends on it, before that module fails in some less obvious way (or, for a fast path guarded by a type check,
silently turns itself off).

This module imports the third-party libraries only, never finmesh, so it reads the same whatever finmesh's
layout: the dependent modules are named as strings.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from typing import Any, NoReturn

import aiosqlite
import grpc
import pytest
from opentelemetry import baggage, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context.context import Context
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import span as trace_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import greenlet_spawn

PROPAGATION = "finmesh.platform.observability.propagation (FinmeshPropagator)"
RPC_TRACING = "finmesh.platform.observability.rpc_tracing (_attribute_blind, _start_span)"
SQLITE_DRIVER = "finmesh.platform.storage.sqlite_driver (OneHopCursor, OneHopConnection, OneHopDBAPI)"
CHANNELS = "finmesh.platform.rpc.channels (MeshChannel.unary_unary)"
RPC_DECODING = "finmesh.platform.rpc.decoding (_tolerant_handler, _TolerantServer)"
INTERCEPTORS = "finmesh.platform.observability.rpc_tracing (TracingClientInterceptor)"


def moved(distribution: str, internal: str, dependent: str, detail: str = "") -> NoReturn:
    """Fail naming the internal, the installed release that changed it and the finmesh module to fix."""
    pytest.fail(
        f"{distribution} {version(distribution)} changed {internal}, which {dependent} relies on"
        f"{': ' + detail if detail else ''}. Adapt that module (or keep {distribution} below this release "
        f"in pyproject.toml and `make lock`).",
        pytrace=False,
    )


def require(condition: Any, distribution: str, internal: str, dependent: str, detail: str = "") -> None:
    if not condition:
        moved(distribution, internal, dependent, detail)


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- opentelemetry-api: the context keys and helpers observability.propagation builds contexts with -----------------


def test_span_key_is_where_the_api_keeps_the_current_span() -> None:
    """propagation builds Context({_SPAN_KEY: span}) itself instead of trace.set_span_in_context."""
    try:
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:
        moved("opentelemetry-api", "opentelemetry.trace.propagation._SPAN_KEY", PROPAGATION, "gone")
    span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    require(
        trace.set_span_in_context(span, Context()) == Context({_SPAN_KEY: span}),
        "opentelemetry-api",
        "opentelemetry.trace.propagation._SPAN_KEY",
        PROPAGATION,
        "set_span_in_context no longer stores the span under it alone",
    )
    require(
        trace.get_current_span(Context({_SPAN_KEY: span})) is span,
        "opentelemetry-api",
        "opentelemetry.trace.propagation._SPAN_KEY",
        PROPAGATION,
        "get_current_span no longer reads it",
    )


def test_baggage_key_is_where_the_api_keeps_baggage() -> None:
    """propagation stores the parsed entries under baggage._BAGGAGE_KEY and reads the stock propagator's there."""
    key: Any = getattr(baggage, "_BAGGAGE_KEY", None)
    require(key is not None, "opentelemetry-api", "opentelemetry.baggage._BAGGAGE_KEY", PROPAGATION, "gone")
    extracted = W3CBaggagePropagator().extract({"baggage": "synthetic=true"}, Context())
    require(
        extracted.get(key) == {"synthetic": "true"},
        "opentelemetry-api",
        "opentelemetry.baggage._BAGGAGE_KEY",
        PROPAGATION,
        f"the W3C propagator's context is {dict(extracted)!r}",
    )
    require(
        baggage.get_all(Context({key: {"synthetic": "true"}})) == {"synthetic": "true"},
        "opentelemetry-api",
        "opentelemetry.baggage._BAGGAGE_KEY",
        PROPAGATION,
        "baggage.get_all no longer reads it",
    )


def test_get_baggage_value_returns_the_context_entries() -> None:
    """propagation.inject reads the entries with baggage._get_baggage_value(context): a dict, falsy when empty."""
    get = getattr(baggage, "_get_baggage_value", None)
    require(
        callable(get) and parameters(get) == ["context"],
        "opentelemetry-api",
        "opentelemetry.baggage._get_baggage_value(context)",
        PROPAGATION,
        "gone or other parameters",
    )
    assert get is not None
    with_entries = baggage.set_baggage("synthetic", "true", Context())
    require(
        dict(get(with_entries)) == {"synthetic": "true"} and not get(Context()),
        "opentelemetry-api",
        "opentelemetry.baggage._get_baggage_value(context)",
        PROPAGATION,
        "answers differently",
    )


def test_tracestate_length_limit_is_the_one_the_stock_propagator_applies() -> None:
    """propagation drops a tracestate over span._TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH, as the stock one does."""
    limit: Any = getattr(trace_span, "_TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH", None)
    require(
        isinstance(limit, int) and limit > 0,
        "opentelemetry-api",
        "opentelemetry.trace.span._TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH",
        PROPAGATION,
        f"now {limit!r}",
    )
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def state(header: str) -> Any:
        context = TraceContextTextMapPropagator().extract({"traceparent": traceparent, "tracestate": header})
        return trace.get_current_span(context).get_span_context().trace_state

    fits = "a=b" + "," * (limit - 3)  # empty members are valid: exactly the limit, one entry
    require(
        state(fits) and not state(fits + ","),
        "opentelemetry-api",
        "opentelemetry.trace.span._TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH",
        PROPAGATION,
        "the stock propagator no longer cuts tracestate at that length",
    )


# --- opentelemetry-sdk: the samplers and span attributes observability.rpc_tracing's fast path reads ---------------


class _Untouchable(Mapping[str, Any]):
    """Attributes a sampler must not read: any look raises."""

    def __getitem__(self, key: str) -> NoReturn:
        raise AssertionError("the sampler read the span's attributes")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the sampler read the span's attributes")

    def __len__(self) -> int:
        raise AssertionError("the sampler read the span's attributes")


def test_parent_based_keeps_its_five_delegates() -> None:
    """rpc_tracing._attribute_blind looks through ParentBased at its private delegates."""
    delegates = {
        name: sampling.StaticSampler(sampling.Decision.DROP)
        for name in (
            "root",
            "remote_parent_sampled",
            "remote_parent_not_sampled",
            "local_parent_sampled",
            "local_parent_not_sampled",
        )
    }
    sampler = sampling.ParentBased(**delegates)
    for name, delegate in delegates.items():
        require(
            getattr(sampler, f"_{name}", None) is delegate,
            "opentelemetry-sdk",
            f"sampling.ParentBased._{name}",
            RPC_TRACING,
            "no longer holds the delegate given as " + name,
        )


def test_builtin_samplers_decide_without_the_attributes() -> None:
    """rpc_tracing fills attributes after the span starts only under samplers of these exact types, which must
    neither read them nor be subclasses the SDK swapped in for the built-in constants."""
    for name in ("_AlwaysOn", "_AlwaysOff"):
        require(
            isinstance(getattr(sampling, name, None), type),
            "opentelemetry-sdk",
            f"sampling.{name}",
            RPC_TRACING,
            "gone",
        )
    for constant, kind in ((sampling.ALWAYS_ON, sampling.StaticSampler), (sampling.ALWAYS_OFF, sampling.StaticSampler)):
        require(
            type(constant) is kind,
            "opentelemetry-sdk",
            "sampling.ALWAYS_ON / ALWAYS_OFF",
            RPC_TRACING,
            f"now of type {type(constant).__name__}",
        )
    blind = [
        sampling.StaticSampler(sampling.Decision.RECORD_AND_SAMPLE),
        sampling._AlwaysOn(None),
        sampling._AlwaysOff(None),
        sampling.TraceIdRatioBased(0.5),
        sampling.ParentBased(sampling.TraceIdRatioBased(0.5)),
    ]
    for sampler in blind:
        try:
            sampler.should_sample(None, 0x0AF7651916CD43DD8448EB211C80319C, "span", attributes=_Untouchable())
        except AssertionError as error:
            moved("opentelemetry-sdk", f"sampling.{type(sampler).__name__}.should_sample", RPC_TRACING, str(error))
    provider = TracerProvider(sampler=blind[-1])
    require(
        provider.sampler is blind[-1],
        "opentelemetry-sdk",
        "TracerProvider.sampler",
        RPC_TRACING,
        "no longer the sampler given",
    )


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.attributes: list[Any] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.attributes.extend(dict(span.attributes or {}) for span in spans)
        return SpanExportResult.SUCCESS


def test_span_attributes_live_in_a_bounded_attributes_dict() -> None:
    """rpc_tracing._start_span writes a new span's attributes straight into span._attributes._dict, when that is
    exactly a BoundedAttributes, mutable, empty, without a value-length limit and with room for them."""
    exporter = _Keep()
    provider = TracerProvider(sampler=sampling.ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span: Any = provider.get_tracer("internals").start_span("span")
    bounded: Any = getattr(span, "_attributes", None)
    require(
        type(bounded) is BoundedAttributes,
        "opentelemetry-sdk",
        "Span._attributes (a BoundedAttributes)",
        RPC_TRACING,
        f"now {type(bounded).__name__}: the fast path would turn itself off unnoticed",
    )
    for name, kind in (
        ("_dict", dict),
        ("_immutable", bool),
        ("maxlen", (int, type(None))),
        ("max_value_len", (int, type(None))),
    ):
        require(
            isinstance(getattr(bounded, name, ...), kind),
            "opentelemetry-api",
            f"BoundedAttributes.{name}",
            RPC_TRACING,
            f"gone or no longer {kind}",
        )
    require(
        not bounded._immutable and not bounded._dict,
        "opentelemetry-api",
        "BoundedAttributes._immutable/_dict",
        RPC_TRACING,
        "a new span's attributes are not empty and mutable",
    )
    bounded._dict.update({"rpc.system": "grpc"})
    require(
        dict(span.attributes) == {"rpc.system": "grpc"},
        "opentelemetry-api",
        "BoundedAttributes._dict",
        RPC_TRACING,
        "the span's attributes no longer read from it",
    )
    span.end()
    require(
        exporter.attributes == [{"rpc.system": "grpc"}],
        "opentelemetry-sdk",
        "Span._attributes",
        RPC_TRACING,
        f"the exported span carries {exporter.attributes!r}",
    )


# --- SQLAlchemy's aiosqlite adapter: the hooks storage.sqlite_driver overrides -------------------------------------


class _Statement:
    """What OneHopCursor puts in place of the DB-API cursor (finmesh's _Outcome): a plain object, sync close."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _AdaptConnection:
    _connection = "driver connection"


def test_adapter_cursor_hooks_have_the_signatures_overridden() -> None:
    expected = {
        "_make_new_cursor": ["self", "connection"],
        "_aenter_cursor": ["self", "cursor"],
        "_execute_async": ["self", "operation", "parameters"],
        "_executemany_async": ["self", "operation", "seq_of_parameters"],
    }
    for name, names in expected.items():
        hook = getattr(AsyncAdapt_aiosqlite_cursor, name, None)
        require(
            hook is not None and parameters(hook) == names,
            "sqlalchemy",
            f"AsyncAdapt_aiosqlite_cursor.{name}",
            SQLITE_DRIVER,
            f"expected ({', '.join(names)}), found {parameters(hook) if hook else 'nothing'}",
        )
    require(
        inspect.iscoroutinefunction(AsyncAdapt_aiosqlite_cursor._execute_async)
        and inspect.iscoroutinefunction(AsyncAdapt_aiosqlite_cursor._executemany_async),
        "sqlalchemy",
        "AsyncAdapt_aiosqlite_cursor._execute_async/_executemany_async",
        SQLITE_DRIVER,
        "no longer coroutines",
    )
    require(
        isinstance(getattr(AsyncAdapt_aiosqlite_cursor, "_awaitable_cursor_close", None), bool),
        "sqlalchemy",
        "AsyncAdapt_aiosqlite_cursor._awaitable_cursor_close",
        SQLITE_DRIVER,
        "gone",
    )
    slots = {name for klass in AsyncAdapt_aiosqlite_cursor.__mro__ for name in getattr(klass, "__slots__", ())}
    used = {"_adapt_connection", "_connection", "_cursor", "_rows"}
    require(
        used <= slots,
        "sqlalchemy",
        "AsyncAdapt_dbapi_cursor.__slots__",
        SQLITE_DRIVER,
        f"missing {sorted(used - slots)} (OneHopCursor has __slots__ = () and sets them)",
    )


async def test_adapter_cursor_calls_the_hooks() -> None:
    """The base cursor opens its cursor through the hooks and runs statements through _execute_async, whose
    rows it serves from _rows; with _awaitable_cursor_close false, close() calls the stand-in's close() plainly."""
    calls: list[Any] = []
    statement = _Statement()

    class Recording(AsyncAdapt_aiosqlite_cursor):
        __slots__ = ()
        _awaitable_cursor_close = False

        def _make_new_cursor(self, connection: Any) -> Any:
            calls.append(("make", connection))
            return statement

        def _aenter_cursor(self, cursor: Any) -> Any:
            calls.append(("aenter", cursor))
            return cursor

        async def _execute_async(self, operation: Any, parameters: Any) -> None:
            calls.append(("execute", operation, parameters))
            self._rows = collections.deque([(1,), (2,)])

        async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
            calls.append(("executemany", operation, seq_of_parameters))

    cursor: Any = Recording(_AdaptConnection())  # type: ignore[arg-type]
    require(
        calls == [("make", "driver connection"), ("aenter", statement)]
        and cursor._cursor is statement
        and cursor._connection == "driver connection",
        "sqlalchemy",
        "AsyncAdapt_dbapi_cursor.__init__",
        SQLITE_DRIVER,
        f"opens its cursor otherwise: {calls!r}",
    )
    calls.clear()
    await greenlet_spawn(cursor.execute, "SELECT 1", {"p": 1})
    rows = cursor.fetchall()
    await greenlet_spawn(cursor.executemany, "INSERT", [{"p": 1}])
    require(
        calls == [("execute", "SELECT 1", {"p": 1}), ("executemany", "INSERT", [{"p": 1}])],
        "sqlalchemy",
        "AsyncAdapt_dbapi_cursor.execute/executemany",
        SQLITE_DRIVER,
        f"no longer go through the hooks: {calls!r}",
    )
    require(
        list(rows) == [(1,), (2,)],
        "sqlalchemy",
        "AsyncAdapt_dbapi_cursor._rows",
        SQLITE_DRIVER,
        f"fetchall no longer serves it: {rows!r}",
    )
    cursor.close()
    require(
        statement.closed,
        "sqlalchemy",
        "AsyncAdapt_dbapi_cursor._awaitable_cursor_close",
        SQLITE_DRIVER,
        "close() no longer calls a plain close() when it is false",
    )


def test_adapter_connection_shape() -> None:
    """OneHopConnection(dbapi, connection) sets _cursor_cls, guards its statements with _execute_mutex and reads
    the aiosqlite connection from _connection; it overrides commit() and rollback()."""
    require(
        parameters(AsyncAdapt_aiosqlite_connection.__init__) == ["self", "dbapi", "connection"],
        "sqlalchemy",
        "AsyncAdapt_aiosqlite_connection.__init__(dbapi, connection)",
        SQLITE_DRIVER,
        f"now {parameters(AsyncAdapt_aiosqlite_connection.__init__)}",
    )
    require(
        AsyncAdapt_aiosqlite_connection._cursor_cls is AsyncAdapt_aiosqlite_cursor,
        "sqlalchemy",
        "AsyncAdapt_aiosqlite_connection._cursor_cls",
        SQLITE_DRIVER,
        "gone or another class",
    )

    class Cursor:
        def __init__(self, adapt_connection: Any) -> None:
            self.adapt_connection = adapt_connection

    class Adapted(AsyncAdapt_aiosqlite_connection):
        __slots__ = ()
        _cursor_cls = Cursor  # type: ignore[assignment]

    adapted = Adapted("dbapi", "driver connection")  # type: ignore[arg-type]
    require(
        adapted._connection == "driver connection",
        "sqlalchemy",
        "AsyncAdapt_dbapi_connection._connection",
        SQLITE_DRIVER,
        "no longer the connection given",
    )
    require(
        isinstance(getattr(adapted, "_execute_mutex", None), asyncio.Lock),
        "sqlalchemy",
        "AsyncAdapt_dbapi_connection._execute_mutex",
        SQLITE_DRIVER,
        "no longer an asyncio.Lock",
    )
    cursor: Any = adapted.cursor()
    require(
        type(cursor) is Cursor and cursor.adapt_connection is adapted,
        "sqlalchemy",
        "AsyncAdapt_dbapi_connection.cursor() (through _cursor_cls)",
        SQLITE_DRIVER,
        "builds its cursor otherwise",
    )
    for name in ("commit", "rollback"):
        require(
            parameters(getattr(AsyncAdapt_aiosqlite_connection, name)) == ["self"],
            "sqlalchemy",
            f"AsyncAdapt_aiosqlite_connection.{name}()",
            SQLITE_DRIVER,
            "takes arguments now",
        )


async def test_adapter_dbapi_connects_to_an_aiosqlite_connection() -> None:
    """OneHopDBAPI is AsyncAdapt_aiosqlite_dbapi(aiosqlite, sqlite3); its connect() gives an adapted connection
    whose _connection is the aiosqlite.Connection, which OneHopConnection re-wraps."""
    dbapi = AsyncAdapt_aiosqlite_dbapi(aiosqlite, sqlite3)
    stock: Any = await greenlet_spawn(dbapi.connect, ":memory:")
    try:
        require(
            isinstance(stock._connection, aiosqlite.Connection),
            "sqlalchemy",
            "AsyncAdapt_aiosqlite_dbapi.connect()._connection",
            SQLITE_DRIVER,
            f"now {type(stock._connection).__name__}",
        )
    finally:
        await greenlet_spawn(stock.close)


# --- aiosqlite: running a function on the connection's own thread -----------------------------------------------


async def test_aiosqlite_runs_a_function_on_the_connection_thread() -> None:
    """sqlite_driver runs each whole statement as `await connection._execute(fn, connection._conn, ...)`, and asks
    `connection._connection` (None once closed) whether a transaction is open."""
    connection = await aiosqlite.connect(":memory:")
    try:
        require(
            isinstance(getattr(connection, "_connection", None), sqlite3.Connection)
            and connection._conn is connection._connection,
            "aiosqlite",
            "Connection._conn / _connection",
            SQLITE_DRIVER,
            "no longer the sqlite3 connection",
        )
        require(
            inspect.iscoroutinefunction(getattr(connection, "_execute", None)),
            "aiosqlite",
            "Connection._execute(fn, *args)",
            SQLITE_DRIVER,
            "gone or no longer a coroutine",
        )

        def on_thread(raw: sqlite3.Connection, sql: str) -> tuple[int, Any]:
            return threading.get_ident(), raw.execute(sql).fetchall()

        thread, rows = await connection._execute(on_thread, connection._conn, "SELECT 41 + 1")
        require(
            rows == [(42,)] and thread != threading.get_ident(),
            "aiosqlite",
            "Connection._execute(fn, *args)",
            SQLITE_DRIVER,
            "no longer calls fn(*args) on the connection's thread",
        )
    finally:
        await connection.close()
    require(
        connection._connection is None, "aiosqlite", "Connection._connection", SQLITE_DRIVER, "not None after close()"
    )


# --- grpcio: what the generated stubs and servers hand finmesh's wrappers ---------------------------------------


async def test_channel_unary_unary_takes_registered_method_fourth() -> None:
    """MeshChannel.unary_unary passes (method, serializer, deserializer, _registered_method) on positionally."""
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    try:
        signature = inspect.signature(type(channel).unary_unary)
    finally:
        await channel.close(None)
    positional = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    require(
        positional[:5] == ["self", "method", "request_serializer", "response_deserializer", "_registered_method"],
        "grpcio",
        "aio.Channel.unary_unary(..., _registered_method)",
        CHANNELS,
        f"now {signature}",
    )


def test_method_handlers_are_namedtuples_with_a_request_deserializer() -> None:
    """rpc_decoding swaps a handler's request_deserializer with _replace (else the handler passes untouched and
    undecodable requests answer UNKNOWN again); the server takes them through add_registered_method_handlers."""
    # Any: the stubs describe the public interface, not the namedtuple underneath that this test is about.
    handlers: list[Any] = [
        grpc.unary_unary_rpc_method_handler(lambda r, c: r, request_deserializer=bytes),
        grpc.unary_stream_rpc_method_handler(lambda r, c: r, request_deserializer=bytes),
        grpc.stream_unary_rpc_method_handler(lambda r, c: r, request_deserializer=bytes),
        grpc.stream_stream_rpc_method_handler(lambda r, c: r, request_deserializer=bytes),
    ]
    for handler in handlers:
        require(
            hasattr(handler, "_replace") and handler.request_deserializer is bytes,
            "grpcio",
            "RpcMethodHandler._replace / request_deserializer",
            RPC_DECODING,
            f"{type(handler)} has neither",
        )
        replaced = handler._replace(request_deserializer=str)
        require(
            replaced.request_deserializer is str and replaced.unary_unary is handler.unary_unary,
            "grpcio",
            "RpcMethodHandler._replace(request_deserializer=...)",
            RPC_DECODING,
            "changes more or less",
        )
    require(
        parameters(grpc.aio.Server.add_registered_method_handlers) == ["self", "service_name", "method_handlers"],
        "grpcio",
        "aio.Server.add_registered_method_handlers(service_name, method_handlers)",
        RPC_DECODING,
        "other parameters",
    )


def test_client_call_details_replace_metadata() -> None:
    """The client interceptor adds metadata with details._replace(metadata=...)."""
    details: Any = grpc.aio.ClientCallDetails("/a.B/C", None, grpc.aio.Metadata(("k", "v")), None, None)
    replaced = details._replace(metadata=[("authorization", "Bearer t")])
    require(
        type(replaced) is grpc.aio.ClientCallDetails
        and replaced.method == "/a.B/C"
        and replaced.metadata == [("authorization", "Bearer t")],
        "grpcio",
        "aio.ClientCallDetails._replace(metadata=...)",
        INTERCEPTORS,
        "no longer a namedtuple of those fields",
    )

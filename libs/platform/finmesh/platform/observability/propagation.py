"""W3C trace context + baggage propagation, cheaper per hop, same wire format and same contexts as OTel's.

OpenTelemetry's default propagators (tracecontext, baggage) cost ~35 us to extract a traceparent and a
one-entry baggage and ~17 us to inject them (a regex per traceparent; per baggage entry a split, two
validating regexes, percent-decoding and a context copy). A payment crosses several hops, each extracting
once and injecting once or twice, and the baggage header is almost always the same few strings (e.g.
"synthetic=true"). So:

- a canonical traceparent (55 characters, lowercase hex, dashes in place) is parsed by slicing;
- a baggage header string maps to its parsed entries through a bounded cache, a baggage mapping to its
  encoded header the same way; tracestate likewise;
- anything else (malformed or non-canonical headers, carriers whose values are lists, custom getters or
  setters, a caller-supplied context) takes OTel's own code path, so the resulting contexts are identical
  to the stock propagators' by construction (tests/unit/test_propagation.py compares them).

Registered the standard way: telemetry.setup_tracing installs it with propagate.set_global_textmap when
OTEL_PROPAGATORS is unset or names the default "tracecontext,baggage".
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar, cast

from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import _TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH, TraceState

_logger = logging.getLogger(__name__)
_BAGGAGE_KEY = otel_baggage._BAGGAGE_KEY  # the context key OTel's baggage API reads
_DELETE_HEX = str.maketrans("", "", "0123456789abcdef")
_FLAGS = {f"{n:02x}": trace.TraceFlags(n) for n in range(256)}
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
K = TypeVar("K")
V = TypeVar("V")

_CACHE_SIZE = 256  # distinct baggage/tracestate strings a process sees: a handful; bounded all the same
_NO_CHANGE = object()  # cached "this baggage header adds nothing" (all entries invalid)


class _BoundedCache(dict[K, V]):
    """A dict that empties itself when full: the working set is tiny, so clearing beats LRU bookkeeping."""

    def put(self, key: K, value: V) -> V:
        if len(self) >= _CACHE_SIZE:
            self.clear()
        self[key] = value
        return value


class FinmeshPropagator(textmap.TextMapPropagator):
    """tracecontext + baggage in one pass, equivalent to CompositePropagator([tracecontext, baggage])."""

    def __init__(self) -> None:
        self._tracecontext = TraceContextTextMapPropagator()
        self._baggage = W3CBaggagePropagator()
        self._stock = CompositePropagator([self._tracecontext, self._baggage])
        self._parsed_baggage: _BoundedCache[str, Any] = _BoundedCache()
        self._encoded_baggage: _BoundedCache[tuple[tuple[str, object], ...], str] = _BoundedCache()
        self._tracestates: _BoundedCache[str, TraceState] = _BoundedCache()

    @property
    def fields(self) -> set[str]:
        return self._stock.fields

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        if context is not None or getter is not textmap.default_getter or type(carrier) is not dict:
            return self._stock.extract(carrier, context, getter=getter)
        headers = cast("dict[str, Any]", carrier)  # checked just above: mypy narrows no TypeVar by type()
        traceparent = headers.get("traceparent")
        tracestate = headers.get("tracestate")
        header = headers.get("baggage")
        if not _is_str_or_none(traceparent, tracestate, header):
            return self._stock.extract(carrier, context, getter=getter)
        values: dict[str, Any] = {}
        if traceparent is not None:
            span = self._remote_span(traceparent, tracestate, headers)
            if span is not None:
                values[_SPAN_KEY] = span
        if header:
            entries = self._baggage_entries(header)
            if entries is not _NO_CHANGE:
                values[_BAGGAGE_KEY] = dict(entries)  # a copy per context: contexts never share a mutable dict
        return Context(values)

    def _remote_span(self, traceparent: str, tracestate: str | None, carrier: dict[str, str]) -> Any:
        """The caller's span from a traceparent, or None where OTel's propagator would find none."""
        if not _canonical(traceparent):
            context = self._tracecontext.extract(carrier, Context())
            return context.get(_SPAN_KEY)
        version, trace_id, span_id, flags = (
            traceparent[0:2],
            traceparent[3:35],
            traceparent[36:52],
            traceparent[53:55],
        )
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN or version == "ff":
            return None
        span_context = trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=_FLAGS[flags],
            trace_state=self._trace_state(tracestate),
        )
        return trace.NonRecordingSpan(span_context)

    def _trace_state(self, header: str | None) -> TraceState | None:
        if header is None:
            return None
        if len(header) > _TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH:
            _logger.warning(
                "tracestate header exceeded the maximum length of %d characters",
                _TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH,
            )
            return None
        state = self._tracestates.get(header)
        if state is None:
            state = self._tracestates.put(header, TraceState.from_header([header]))
        return state  # TraceState is immutable: sharing one between contexts is safe

    def _baggage_entries(self, header: str) -> Any:
        """The entries OTel's baggage propagator would set for this header (parsed once per string)."""
        entries = self._parsed_baggage.get(header)
        if entries is None:
            context = self._baggage.extract({"baggage": header}, Context())
            parsed = context.get(_BAGGAGE_KEY)
            entries = self._parsed_baggage.put(header, parsed if parsed is not None else _NO_CHANGE)
        return entries

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context != trace.INVALID_SPAN_CONTEXT:  # OTel's test (not is_valid): same headers out
            setter.set(
                carrier,
                "traceparent",
                f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}",
            )
            if span_context.trace_state:
                setter.set(carrier, "tracestate", span_context.trace_state.to_header())
        entries = otel_baggage._get_baggage_value(context)
        if entries:
            header = self._baggage_header(entries, context)
            if header:
                setter.set(carrier, "baggage", header)

    def _baggage_header(self, entries: dict[str, object], context: Context | None) -> str:
        try:
            key = tuple(entries.items())
            header = self._encoded_baggage.get(key)
        except TypeError:  # an unhashable value: encode it every time
            key, header = None, None
        if header is None:
            encoded: dict[str, str] = {}
            self._baggage.inject(encoded, context)
            header = encoded.get("baggage", "")
            if key is not None and all(type(k) is str and type(v) is str for k, v in key):
                # Only plain strings as keys: 1 == True would otherwise share an entry though str() differs.
                self._encoded_baggage.put(key, header)
        return header


def _is_str_or_none(*values: Any) -> bool:
    return all(value is None or type(value) is str for value in values)


def _canonical(traceparent: str) -> bool:
    """version-traceid-spanid-flags, nothing around it: the form every W3C implementation sends."""
    return (
        len(traceparent) == 55
        and traceparent[2] == "-"
        and traceparent[35] == "-"
        and traceparent[52] == "-"
        and traceparent.translate(_DELETE_HEX) == "---"
    )

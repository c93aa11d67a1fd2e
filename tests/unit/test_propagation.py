"""FinmeshPropagator must yield exactly the contexts and headers OpenTelemetry's own propagators do."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from finmesh.platform.observability.propagation import FinmeshPropagator

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

CARRIERS: list[dict[str, Any]] = [
    {},
    {"traceparent": TP},
    {"traceparent": TP, "baggage": "synthetic=true"},
    {"traceparent": TP, "baggage": "synthetic=true,tenant=a%20b,x=1;prop=2"},
    {"traceparent": TP, "baggage": " k1 = v1 , k2=v%2C2,k1=again"},
    {"traceparent": TP, "baggage": "bad key=v,ok=1,=novalue,noequals"},
    {"traceparent": TP, "baggage": "only bad=entry"},
    {"traceparent": TP, "baggage": "k=caf\u00e9,ok=2"},
    {"traceparent": TP, "baggage": "a+b=c+d,e%3Df=%F0%9F%98%80"},
    {"traceparent": TP, "baggage": ""},
    {"baggage": "synthetic=true"},
    {"traceparent": TP, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
    {"traceparent": TP, "tracestate": "not a valid tracestate!!"},
    {"traceparent": TP, "tracestate": ""},
    {"traceparent": TP, "tracestate": "a=" + "b" * 600},
    {"traceparent": TP, "tracestate": ["rojo=1", "congo=2"]},
    {"traceparent": [TP]},
    {"traceparent": TP.upper()},
    {"traceparent": "  " + TP},
    {"traceparent": TP + "  "},
    {"traceparent": TP + "\n"},
    {"traceparent": TP + "-extra"},
    {"traceparent": "01" + TP[2:] + "-extra"},
    {"traceparent": "01" + TP[2:]},
    {"traceparent": "ff" + TP[2:]},
    {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad-b7169203331-01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01"},
    {"traceparent": "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01"},
    {"traceparent": ""},
    {"traceparent": "garbage", "baggage": "synthetic=true"},
    {"traceparent": "x" * 600},
]


def stock() -> CompositePropagator:
    return CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def assert_same_context(ours: Context, theirs: Context) -> None:
    assert len(ours) == len(theirs)  # no extra or missing context keys
    ours_span, theirs_span = trace.get_current_span(ours), trace.get_current_span(theirs)
    assert type(ours_span) is type(theirs_span)
    assert ours_span.get_span_context() == theirs_span.get_span_context()
    assert ours_span.get_span_context().trace_state == theirs_span.get_span_context().trace_state
    assert ours_span.get_span_context().is_remote == theirs_span.get_span_context().is_remote
    assert list(baggage.get_all(ours).items()) == list(baggage.get_all(theirs).items())


@pytest.mark.parametrize("carrier", CARRIERS, ids=range(len(CARRIERS)))
def test_extract_matches_opentelemetry(carrier: dict[str, Any]) -> None:
    ours = FinmeshPropagator()
    expected = stock().extract(carrier)
    assert_same_context(ours.extract(carrier), expected)
    assert_same_context(ours.extract(carrier), expected)  # the second time from the caches


@pytest.mark.parametrize("carrier", CARRIERS, ids=range(len(CARRIERS)))
def test_extract_into_a_given_context_matches_opentelemetry(carrier: dict[str, Any]) -> None:
    base = baggage.set_baggage("existing", "1", Context())
    assert_same_context(FinmeshPropagator().extract(carrier, base), stock().extract(carrier, base))


@pytest.mark.parametrize("carrier", CARRIERS, ids=range(len(CARRIERS)))
def test_inject_of_an_extracted_context_matches_opentelemetry(carrier: dict[str, Any]) -> None:
    context = stock().extract(carrier)
    ours_propagator = FinmeshPropagator()
    theirs: dict[str, str] = {}
    stock().inject(theirs, context)
    for _ in range(2):  # cold and cached
        ours: dict[str, str] = {}
        ours_propagator.inject(ours, context)
        assert ours == theirs


@pytest.mark.parametrize(
    "entries",
    [
        {"synthetic": "true"},
        {"a b": "c,d", "e=f": "g;h", "é": "ü"},
        {"flag": True, "count": 1},
        {"count": 1},
        {"count": True},
        {"x": "y" * 5000},
    ],
)
def test_inject_of_baggage_values_matches_opentelemetry(entries: dict[str, object]) -> None:
    context = Context()
    for key, value in entries.items():
        context = baggage.set_baggage(key, value, context)
    propagator = FinmeshPropagator()
    propagator.inject({}, baggage.set_baggage("count", 1, Context()))  # warm the cache with a lookalike
    ours: dict[str, str] = {}
    theirs: dict[str, str] = {}
    propagator.inject(ours, context)
    stock().inject(theirs, context)
    assert ours == theirs


def test_extracted_contexts_do_not_share_baggage() -> None:
    propagator = FinmeshPropagator()
    first = propagator.extract({"baggage": "synthetic=true"})
    second = propagator.extract({"baggage": "synthetic=true"})
    assert baggage.get_all(first) == baggage.get_all(second) == {"synthetic": "true"}
    baggage._get_baggage_value(first)["mutated"] = "x"  # even a careless writer cannot leak into another
    assert baggage.get_all(second) == {"synthetic": "true"}


_hex = st.text(alphabet="0123456789abcdefABCDEF-x ", min_size=0, max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    traceparent=_hex, state=st.one_of(st.none(), st.text(max_size=40)), bag=st.one_of(st.none(), st.text(max_size=40))
)
def test_extract_matches_opentelemetry_on_arbitrary_headers(
    traceparent: str, state: str | None, bag: str | None
) -> None:
    carrier = {"traceparent": traceparent}
    if state is not None:
        carrier["tracestate"] = state
    if bag is not None:
        carrier["baggage"] = bag
    assert_same_context(FinmeshPropagator().extract(carrier), stock().extract(carrier))


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(["00", "01", "fe", "ff", "0g"]),
    trace_id=st.sampled_from(["0" * 32, "1" * 32, "a" * 32]),
    span_id=st.sampled_from(["0" * 16, "2" * 16, "b" * 16]),
    flags=st.sampled_from(["00", "01", "ff", "0x"]),
)
def test_extract_matches_opentelemetry_on_canonical_shapes(
    version: str, trace_id: str, span_id: str, flags: str
) -> None:
    carrier = {"traceparent": f"{version}-{trace_id}-{span_id}-{flags}"}
    assert_same_context(FinmeshPropagator().extract(carrier), stock().extract(carrier))


@pytest.mark.parametrize(
    ("setting", "ours"),
    [
        (None, True),
        ("tracecontext,baggage", True),
        (" tracecontext , baggage ", True),
        ("tracecontext", False),
        ("baggage,tracecontext", False),
        ("none", False),
    ],
)
def test_setup_installs_the_propagator_only_for_the_default_setting(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, ours: bool
) -> None:
    from opentelemetry import propagate

    from finmesh.platform.observability.telemetry import install_propagator

    if setting is None:
        monkeypatch.delenv("OTEL_PROPAGATORS", raising=False)
    else:
        monkeypatch.setenv("OTEL_PROPAGATORS", setting)
    previous = propagate.get_global_textmap()
    configured = stock()  # what OTel would have set up from the setting
    propagate.set_global_textmap(configured)
    try:
        install_propagator()
        assert isinstance(propagate.get_global_textmap(), FinmeshPropagator) is ours
        assert ours or propagate.get_global_textmap() is configured
    finally:
        propagate.set_global_textmap(previous)

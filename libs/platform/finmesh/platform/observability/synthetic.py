"""Synthetic traffic: load tests and rollout probes mark their calls with the W3C baggage entry `synthetic=true`.

The server span (rpc_tracing.server_span) makes the caller's baggage current
for the handler, and the tracing client interceptor forwards the current
baggage on every outgoing call, so the mark follows a request from hop to
hop. The mark is the caller's claim: services use it to keep such traffic
apart (money moves only between dedicated test accounts, figures leave it
out), never to relax a check.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry import baggage

KEY = "synthetic"
_TRUE = "true"


def is_synthetic() -> bool:
    """Whether the current request carries the mark (as baggage in the current OTel context)."""
    value = baggage.get_baggage(KEY)
    return isinstance(value, str) and _is_true(value)


def marked_in(metadata: Iterable[tuple[str, Any]] | None) -> bool:
    """Whether gRPC call metadata carries the mark in its `baggage` header."""
    return any(key == "baggage" and isinstance(value, str) and _has_mark(value) for key, value in metadata or ())


def requested(context: Any = None) -> bool:
    """The mark of the call being served: from the current baggage or, on a server running without
    tracing (which then extracts no baggage), from the call's own metadata."""
    return is_synthetic() or (context is not None and marked_in(context.invocation_metadata()))


def _has_mark(header: str) -> bool:
    for member in header.split(","):
        name, _, value = member.partition("=")
        if name.strip() == KEY and _is_true(value):
            return True
    return False


def _is_true(value: str) -> bool:
    # Properties after ';' belong to the entry, not to its value (OTel's propagator keeps them in the value).
    return value.split(";", 1)[0].strip().lower() == _TRUE


def call_metadata() -> tuple[tuple[str, str], ...]:
    """The mark as metadata for a single call, for clients without the tracing interceptor."""
    return (("baggage", f"{KEY}={_TRUE}"),)

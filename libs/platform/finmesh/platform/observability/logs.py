"""Structured JSON logs (structlog) with trace ids, deployment color, and personal data masked."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, FilteringBoundLogger, Processor

from finmesh.platform.privacy.pii import mask_value

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_trace_context(_: Any, __: str, event: EventDict) -> EventDict:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


def _mask_pii(_: Any, __: str, event: EventDict) -> EventDict:
    # Runs last before rendering, so nothing added by earlier processors escapes it.
    return {key: mask_value(key, value) for key, value in event.items()}


def _static_fields(fields: dict[str, str]) -> Processor:
    def add(_: Any, __: str, event: EventDict) -> EventDict:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


def configure_logging(
    service: str, *, level: str = "info", version: str = "", color: str = "", stream: TextIO | None = None
) -> None:
    """Send structlog and stdlib logging as one JSON object per line to `stream` (stderr)."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _static_fields({"service": service, "service_version": version, "deployment_color": color}),
        _add_trace_context,
        structlog.processors.format_exc_info,
        _mask_pii,
    ]
    renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (grpc, sqlalchemy, asyncio) log through stdlib: render them the same way.
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def get_logger(name: str = "finmesh") -> FilteringBoundLogger:
    """A logger named `name`; what configure_logging set up (a filtering bound logger) once it has run."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger

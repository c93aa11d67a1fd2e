"""The one way a service process runs: configure, build, serve, drain on SIGTERM, close."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

from finmesh.platform.config import ServiceSettings
from finmesh.platform.logs import configure_logging, get_logger
from finmesh.platform.server import Registration, RunningServer, create_server, wait_for_termination_signal
from finmesh.platform.telemetry import setup_tracing


class ServiceApp(Protocol):
    """What a service hands the runner: its gRPC services and its background work."""

    registrations: list[Registration]

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def start_app(app: ServiceApp, settings: ServiceSettings) -> RunningServer:
    """Start background work and the server (tests use this directly, on port 0)."""
    await app.start()
    return await create_server(settings, app.registrations)


async def _serve(name: str, settings: ServiceSettings, build: Callable[[], Awaitable[ServiceApp]]) -> None:
    log = get_logger(f"finmesh.{name}")
    app = await build()
    running = await start_app(app, settings)
    log.info("serving", port=running.port, host=settings.host)
    # One machine-readable line on stdout so supervisors and tests learn the port.
    print(json.dumps({"service": name, "port": running.port}), flush=True)
    await wait_for_termination_signal()
    log.info("draining", grace_seconds=settings.shutdown_grace_seconds)
    await running.drain(settings)
    await app.close()
    log.info("stopped")


def run_service(name: str, settings: ServiceSettings, build: Callable[[], Awaitable[ServiceApp]]) -> None:
    """Entry point body shared by every service's main()."""
    configure_logging(name, level=settings.log_level, version=settings.service_version,
                      color=settings.deployment_color, stream=sys.stderr)
    provider = None
    if settings.tracing_enabled:
        span_file = settings.span_file
        provider = setup_tracing(name, version=settings.service_version, color=settings.deployment_color,
                                 span_file=span_file)
    try:
        asyncio.run(_serve(name, settings, build))
    finally:
        if provider is not None:
            provider.shutdown()  # flushes spans still in the batch queue

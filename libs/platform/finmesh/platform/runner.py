"""The one way a service process runs: configure, build, serve, drain on SIGTERM, close."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability.logs import configure_logging, get_logger
from finmesh.platform.observability.metrics import MetricsEndpoint, setup_metrics
from finmesh.platform.observability.telemetry import setup_tracing
from finmesh.platform.rpc.server import Registration, RunningServer, create_server, wait_for_termination_signal
from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.migrations import MigrationResult, upgrade


class ServiceApp(Protocol):
    """What a service hands the runner: its gRPC services and its background work."""

    registrations: list[Registration]

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def start_app(app: ServiceApp, settings: ServiceSettings) -> RunningServer:
    """Start background work and the server (tests use this directly, on port 0)."""
    await app.start()
    return await create_server(settings, app.registrations)


async def _serve(
    name: str, settings: ServiceSettings, build: Callable[[], Awaitable[ServiceApp]], metrics: MetricsEndpoint | None
) -> None:
    log = get_logger(f"finmesh.{name}")
    app = await build()
    running = await start_app(app, settings)
    metrics_port = metrics.port if metrics is not None else 0
    # A service with HTTP listeners of its own (identity's JWKS) names them: {"jwks_port": ...}.
    http_ports: dict[str, int] = app.http_ports() if hasattr(app, "http_ports") else {}
    log.info("serving", port=running.port, host=settings.host, metrics_port=metrics_port, **http_ports)
    # One machine-readable line on stdout so supervisors and tests learn the ports.
    print(json.dumps({"service": name, "port": running.port, "metrics_port": metrics_port, **http_ports}), flush=True)
    await wait_for_termination_signal()
    log.info("draining", grace_seconds=settings.shutdown_grace_seconds)
    await running.drain(settings)
    await app.close()
    log.info("stopped")


def run_service(name: str, settings: ServiceSettings, build: Callable[[], Awaitable[ServiceApp]]) -> None:
    """Entry point body shared by every service's main()."""
    configure_logging(
        name,
        level=settings.log_level,
        version=settings.service_version,
        color=settings.deployment_color,
        stream=sys.stderr,
    )
    provider = None
    if settings.tracing_enabled:
        span_file = settings.span_file
        provider = setup_tracing(
            name, version=settings.service_version, color=settings.deployment_color, span_file=span_file
        )
    metrics = None
    if settings.metrics_enabled:
        # Before the app is built: its instruments then record into this provider from the first call.
        metrics = setup_metrics(
            name,
            version=settings.service_version,
            color=settings.deployment_color,
            host=settings.host,
            port=None if settings.metrics_port < 0 else settings.metrics_port,
        )
    try:
        asyncio.run(_serve(name, settings, build, metrics))
    finally:
        if provider is not None:
            provider.shutdown()  # flushes spans still in the batch queue
        if metrics is not None:
            metrics.shutdown()


def migrate_requested(name: str, argv: list[str] | None = None) -> bool:
    """True for `finmesh-<name> migrate` (the Helm hook Job's command); no arguments means serve."""
    args = sys.argv[1:] if argv is None else argv
    if args and args != ["migrate"]:
        # An unknown word must not start a server the caller did not ask for.
        sys.exit(f"usage: finmesh-{name} [migrate]")
    return bool(args)


async def _migrate(name: str, settings: ServiceSettings) -> MigrationResult:
    engine = create_engine(settings.database_url_for(name), pool_size=settings.db_pool_size)
    try:
        return await upgrade(engine, name)
    finally:
        await engine.dispose()


def run_migrate(name: str) -> int:
    """`finmesh-<name> migrate`: upgrade the database to head and exit; starts no server, calls no service.

    Exit 0 also when the database is ahead of this code (an older image after a rollback runs the Job
    again); non-zero only when the upgrade failed. Reads only the shared settings (database, logs), so
    a service's own settings cannot block a migration.
    """
    settings = ServiceSettings()
    configure_logging(
        name,
        level=settings.log_level,
        version=settings.service_version,
        color=settings.deployment_color,
        stream=sys.stderr,
    )
    log = get_logger(f"finmesh.{name}")
    try:
        result = asyncio.run(_migrate(name, settings))
    except Exception as error:  # whatever failed, the exit status and this line are all the Job reports
        log.error("migration failed", error=f"{type(error).__name__}: {error}", exc_info=True)
        return 1
    if result.ahead:
        log.info("database ahead of code", revision=list(result.before))
    else:
        log.info(
            "migrated" if result.changed else "already at head",
            revision=list(result.after),
            before=list(result.before),
            adopted=result.adopted,
        )
    return 0

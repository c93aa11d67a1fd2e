"""Shared fixtures: databases (SQLite and PostgreSQL), in-memory spans, in-process services."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from finmesh.platform.observability.logs import configure_logging
from finmesh.platform.observability.telemetry import JsonlSpanExporter, MaskingExporter
from tests import metrics as test_metrics
from tests.rabbitmq import events_transport, rabbitmq  # noqa: F401 - fixtures for every suite
from tests.reliability.secret_scan import scan_tree

PG_HOST = os.environ.get("FINMESH_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FINMESH_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("FINMESH_TEST_PG_USER", "postgres")
# In CI the PostgreSQL runs are required: a missing server fails instead of skipping.
PG_REQUIRED = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_SPANS = InMemorySpanExporter()


def pytest_configure(config: pytest.Config) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "finmesh-tests"}))
    provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    trace.set_tracer_provider(provider)
    # In-process services record into this one provider: tests read it through tests/metrics.py.
    metrics.set_meter_provider(test_metrics.provider())


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test (in-process services share the test's tracer provider)."""
    _SPANS.clear()
    yield _SPANS
    _SPANS.clear()


async def _pg_admin() -> asyncpg.Connection:
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5)


class Databases:
    """Hands out fresh, empty databases of one kind and removes them afterwards."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._tmp = tmp_path
        self._created: list[str] = []

    async def new(self, label: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite+aiosqlite:///{self._tmp / (label + '-' + uuid.uuid4().hex[:6] + '.db')}"
        name = f"fmtest_{label}_{uuid.uuid4().hex[:10]}"
        admin = await _pg_admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self._created.append(name)
        return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    async def drop_all(self) -> None:
        if not self._created:
            return
        admin = await _pg_admin()
        try:
            for name in self._created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _postgres_reachable() -> str | None:
    try:
        conn = await _pg_admin()
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"
    await conn.close()
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Databases]:
    """Run the test once on SQLite and once on PostgreSQL."""
    if request.param == "postgres":
        problem = await _postgres_reachable()
        if problem:
            message = f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable ({problem})"
            if PG_REQUIRED:
                pytest.fail(message + "; CI requires it")
            pytest.skip(message)
    dbs = Databases(request.param, tmp_path)
    yield dbs
    await dbs.drop_all()


# --- The session-wide scan for personal data and secrets (tests/reliability/secret_scan.py) ----------------------
# In-process services log and export spans the way deployed ones do (masked JSON lines, masked spans), into files
# under basetemp, beside the log and span files of the process tests; when the session ends every such file is
# scanned and any identity number, phone, e-mail, password, token or key found fails the run.

_SCAN_SPANS: BatchSpanProcessor | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _SCAN_SPANS
    base = session.config._tmp_path_factory.getbasetemp()  # pytest's own; no public way before a test runs
    stream = (base / "inprocess-services.log").open("a", encoding="utf-8", buffering=1)
    configure_logging("tests", level="info", stream=stream)
    _SCAN_SPANS = BatchSpanProcessor(MaskingExporter(JsonlSpanExporter(base / "inprocess-spans.jsonl")))
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(_SCAN_SPANS)


@pytest.hookimpl(trylast=True)  # after session fixtures are torn down: their last log lines count too
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SCAN_SPANS is not None:
        _SCAN_SPANS.force_flush()
    base = session.config._tmp_path_factory.getbasetemp()
    report = scan_tree([base])
    if report.findings:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return
    terminal.write_line("")  # -q leaves the cursor after the progress dots
    terminal.write_sep(
        "-",
        f"secret scan: {report.files} log/span files, {report.bytes / 1e6:.1f} MB under {base}: "
        f"{len(report.findings)} findings",
    )
    for finding in report.findings[:50]:
        terminal.write_line(str(finding), red=True)
    if report.findings:
        terminal.write_line(
            "personal data or secrets reached a log or span file: fix the masking "
            "(finmesh.platform.observability.logs / pii / telemetry), not the scan",
            red=True,
        )

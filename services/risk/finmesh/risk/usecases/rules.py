"""The rules this replica runs: the newest activation in the shared database, kept fresh by polling.

Rules are activated three ways: the packaged default (only when nothing was
ever activated), the watched file FINMESH_RISK_RULES_FILE (when its content
changes), and the UpdateRules RPC. The newest activation wins on every
replica. A file's content is activated once: restarting a replica does not
undo a later UpdateRules, and only a new file content does. Content that
fails validation is refused, reported, and the active rules stay.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.platform.errors import FailedPrecondition, FieldViolation, InvalidArgument
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import aware
from finmesh.platform.storage.idempotency import IdempotencyStore, KeyedCall, Reply
from finmesh.risk.config import DEFAULT_RULES_FILE
from finmesh.risk.domain.rules import Rules, RulesError, content_hash, parse_rules
from finmesh.risk.store import rules as store

_log = get_logger("finmesh.risk.rules")


@dataclass(frozen=True)
class ActiveRules:
    rules: Rules
    source: str
    activation_id: int
    activated_at: datetime


class RulesRegistry:
    def __init__(
        self, engine: AsyncEngine, answers: IdempotencyStore, *, file: Path | None = None, poll_seconds: float = 1.0
    ) -> None:
        self._engine = engine
        self._answers = answers
        self._file = file
        self._poll_seconds = poll_seconds
        self._active: ActiveRules | None = None
        # What this replica last read from the file, so an unchanged file costs one stat() per poll.
        self._file_stamp: tuple[int, int, int] | None = None
        self._file_hash = ""
        self.file_error = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> ActiveRules:
        if self._active is None:
            raise RuntimeError("rules not loaded: call load() first")
        return self._active

    async def load(self) -> None:
        """At start: apply a changed file, else the database's newest rules, else the packaged default.

        A file that is refused while no rules were ever active stops the
        process (fail fast): there is nothing the operator chose to fall back to.
        """
        if self._file is not None:
            await self._sync_file()
        async with self._engine.begin() as conn:
            row = await store.latest(conn)
            if row is None:
                if self._file is not None and self.file_error:
                    raise RulesError(
                        [
                            FieldViolation(
                                "file", f"{self._file} refused and no rules were ever active: {self.file_error}"
                            )
                        ]
                    )
                source = DEFAULT_RULES_FILE.read_text(encoding="utf-8")
                row = await self.activate(conn, source, parse_rules(source), "default")
        self._adopt(row)
        if self._active is None:
            raise RulesError([FieldViolation("rules", "the active rules in the database cannot be read")])

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="risk-rules-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a database hiccup must not stop the watch; the old rules stay
                _log.exception("rules_refresh_failed")

    async def refresh(self) -> None:
        """Pick up a changed file and any newer activation (from another replica or the RPC)."""
        if self._file is not None:
            await self._sync_file()
        async with self._engine.connect() as conn:
            newest = await store.latest_id(conn)
            if newest is not None and (self._active is None or newest != self._active.activation_id):
                row = await store.latest(conn)
                if row is not None:
                    self._adopt(row)
            await conn.rollback()

    async def update(self, call: KeyedCall[Rules, Reply], source: str) -> Reply:
        """UpdateRules: activate `source` if it is valid rules, and run them here at once (other replicas at
        their next poll). Refused rules change nothing: the active rules stay."""
        try:
            rules = parse_rules(source)
        except RulesError as error:
            raise InvalidArgument(error.violations, f"rules refused, the active rules stay: {error}") from None

        async def activate(conn: AsyncConnection) -> Rules:
            await self.activate(conn, source, rules, "rpc")
            return rules

        reply = await call.run(self._answers, activate)
        await self.refresh()
        return reply

    async def activate(self, conn: AsyncConnection, source: str, rules: Rules, origin: str) -> Any:
        """Record validated rules as the newest activation (in the caller's transaction).

        Returns the activation now in force, or None when the file's content
        was activated before (newer activations stand). A version already
        used for other content is refused: a decision's version must name
        exactly one set of rules.
        """
        digest = content_hash(source)
        if origin == "file":
            last_from_file = await store.latest(conn, "file")
            if last_from_file is not None and last_from_file.content_hash == digest:
                return None
        else:
            newest = await store.latest(conn)
            if newest is not None and newest.content_hash == digest:
                return newest
        if await store.hashes_of_version(conn, rules.version) - {digest}:
            raise FailedPrecondition(
                "RULES_VERSION_CONFLICT",
                f"version {rules.version!r} was activated before with different content; "
                "give changed rules a new version",
                version=rules.version,
            )
        row = await store.activate(
            conn, version=rules.version, source=source, content_hash=digest, origin=origin, now=datetime.now(UTC)
        )
        _log.info("rules_activated", version=rules.version, origin=origin, activation_id=row.id)
        return row

    async def _sync_file(self) -> None:
        assert self._file is not None
        try:
            stat = self._file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == self._file_stamp:
                return
            source = self._file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            self._refuse(f"cannot read the file: {getattr(error, 'strerror', None) or type(error).__name__}", "")
            return
        digest = content_hash(source)
        if digest == self._file_hash:
            self._file_stamp = stamp
            return
        try:
            rules = parse_rules(source, field="file")
            async with self._engine.begin() as conn:
                row = await self.activate(conn, source, rules, "file")
        except (RulesError, FailedPrecondition) as error:
            self._refuse(str(error), digest)
            self._file_stamp = stamp
            return
        # Only now: a database error above leaves the stamp unchanged, so the next poll retries.
        self._file_stamp, self._file_hash, self.file_error = stamp, digest, ""
        if row is not None:
            self._adopt(row)

    def _refuse(self, message: str, digest: str) -> None:
        self._file_hash = digest
        if message != self.file_error:
            _log.error(
                "rules_file_refused",
                path=str(self._file),
                error=message,
                active_version=self._active.rules.version if self._active else "",
            )
        self.file_error = message

    def _adopt(self, row: Any) -> None:
        try:
            rules = parse_rules(row.source)
        except RulesError as error:
            # Written by another build (a blue-green peer) with rules this build cannot read: keep ours.
            _log.error("rules_activation_unreadable", activation_id=row.id, error=str(error))
            return
        self._active = ActiveRules(rules, row.source, row.id, aware(row.activated_at) or datetime.now(UTC))

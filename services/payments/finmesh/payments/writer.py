"""The ledger writer: every ledger change runs here, many at once in one transaction (group commit).

Callers submit commands and await their answers. One task takes whatever is
queued, opens a transaction, locks the audit head (so writers in other
replicas wait: balances have one writer at a time and rows are never locked
in conflicting orders), runs each command in memory against a unit of work,
then writes all changes, their audit records and their idempotency answers,
and commits once. A refused command rolls back to its checkpoint and records
its refusal; the others in the batch are not affected. If the batch itself
fails (a row the database refuses, a bug), it is committed again without the
commands that fail it (finmesh.platform.storage.group_commit): one bad command cannot
fail its neighbours, and only its own caller gets the error.

Why: a commit costs an fsync. Committing concurrent payments together turns
N fsyncs into one, and the in-memory pass turns per-payment statements into
a few multi-row ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments.domain.audit import GENESIS_HASH
from finmesh.payments.domain.limits import limit_day
from finmesh.payments.store.recent import RecentStates
from finmesh.payments.store.schema import audit_head, idempotency
from finmesh.payments.store.tiers import PrincipalTierSource, TierSource
from finmesh.payments.store.uow import UnitOfWork
from finmesh.platform.errors import DomainError, FailedPrecondition, InvalidArgument
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.telemetry import inject_context
from finmesh.platform.storage.db import write_gate
from finmesh.platform.storage.group_commit import commit_apart
from finmesh.platform.storage.idempotency import Answer, StoredRefusal, record_answers, replay_stored, stored_answers
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread

_log = get_logger("finmesh.payments.writer")

Action = Callable[[UnitOfWork], Awaitable[Any]]

# Built once (see store.uow: building a statement costs more than running it).
_HEAD_FOR_UPDATE = select(audit_head.c.sequence, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
_MOVE_HEAD = update(audit_head).where(audit_head.c.id == 1).values(sequence=bindparam("b_sequence"),
                                                                   hash=bindparam("b_hash"))


@dataclass
class Command:
    """One ledger change. `render` turns the action's result into the reply stored under the key."""

    method: str
    # Whose key (finmesh.platform.storage.idempotency.caller_scope); None for an operation the previous release began.
    scope: str | None
    key: str
    fingerprint: bytes
    response_type: type[Message]
    action: Action
    render: Callable[[Any], Message]
    # False for the first half of a two-step operation (a payout's hold): only
    # its refusal is final; the answer is recorded when the channel has spoken.
    record_success: bool = True
    # Runs in a batch of its own (settlement reads rows with queries that must see every earlier change).
    exclusive: bool = False
    # Accounts the command will touch: the writer loads a batch's accounts (and their owners' limit
    # state) in a few queries instead of a few per command.
    accounts: tuple[str, ...] = ()
    carrier: dict[str, str] = field(default_factory=inject_context)
    future: asyncio.Future[Message] | None = None


@dataclass
class _Outcome:
    reply: Message | None = None
    error: BaseException | None = None


class LedgerWriter:
    def __init__(self, engine: AsyncEngine, tier_source: TierSource,
                 to_status: Callable[[DomainError], status_pb2.Status], *, max_batch: int = 256,
                 on_commit: Callable[[], None] | None = None, limits_utc_offset_minutes: int = 480,
                 test_owners: frozenset[str] = frozenset(), thread: SqliteWriteThread | None = None) -> None:
        self._limits_offset = limits_utc_offset_minutes
        self.test_owners = test_owners
        self._engine = engine
        # The paying customer's token tier first; `tier_source` (payments' table by default) for other callers.
        self.tier_source: TierSource = PrincipalTierSource(tier_source)
        self._to_status = to_status
        self._max_batch = max_batch
        self._on_commit = on_commit or (lambda: None)
        self._queue: collections.deque[Command] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self.batches = 0  # for benchmarks: how many transactions carried the commands
        self.recent = RecentStates()
        # On an SQLite file each batch's transaction runs whole on a write thread (its owner closes it): one
        # hand-off per batch instead of a greenlet and a driver-thread hop per statement (about fifteen a batch).
        # The commands' code is the same either way; PostgreSQL (and in-memory SQLite) keep the async engine.
        self._thread = thread

    async def prepare(self) -> None:
        """Create the audit head row if this is a fresh database."""
        async with self._engine.begin() as conn:
            if (await conn.execute(select(audit_head.c.id).where(audit_head.c.id == 1))).first() is None:
                with contextlib.suppress(IntegrityError):  # another replica created it first
                    await conn.execute(insert(audit_head).values(id=1, sequence=0, hash=GENESIS_HASH))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="payments-ledger-writer")

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Finish what is queued (up to `drain_seconds`), then stop; later submissions are refused."""
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while (self._queue or self._busy) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for command in self._queue:
            if command.future and not command.future.done():
                command.future.set_exception(asyncio.CancelledError())
        self._queue.clear()

    async def submit(self, command: Command) -> Message:
        """Run `command` in the next batch; its reply, or its refusal raised."""
        if self._task is None or self._task.done():
            raise RuntimeError("ledger writer is not running")
        command.future = asyncio.get_running_loop().create_future()
        self._queue.append(command)
        self._wake.set()
        return await command.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            self._busy = True
            try:
                await self._process(batch)
            except Exception:  # noqa: BLE001 - the writer must outlive any one batch
                _log.exception("ledger_batch_failed", size=len(batch))
            finally:
                self._busy = False

    def _take(self) -> list[Command]:
        first = self._queue.popleft()
        if first.exclusive:
            return [first]
        batch = [first]
        while self._queue and len(batch) < self._max_batch and not self._queue[0].exclusive:
            batch.append(self._queue.popleft())
        return batch

    async def _process(self, batch: list[Command]) -> None:
        # A row the database refuses fails only its own command; a dropped connection fails all at once (each
        # caller gets UNAVAILABLE and retries with its key; a commit that did land answers from its stored reply).
        outcomes = await commit_apart(batch, self._commit, writer="payments-ledger")
        for command, outcome in zip(batch, outcomes, strict=True):
            assert command.future is not None
            if command.future.done():
                continue  # the caller went away; the change stands and its answer is stored
            if isinstance(outcome, Exception):
                command.future.set_exception(outcome)
            elif outcome.error is not None:
                command.future.set_exception(outcome.error)
            else:
                command.future.set_result(outcome.reply)  # type: ignore[arg-type]

    async def _commit(self, batch: list[Command]) -> list[_Outcome]:
        now = datetime.now(UTC)

        async def work(conn: Any) -> tuple[list[_Outcome], UnitOfWork]:
            return await self._transaction(conn, batch, now)

        if self._thread is not None:
            outcomes, uow = await self._thread.transaction(work)
        else:
            # The gate: the outbox relay writes to the same SQLite file; taking turns here beats SQLite's busy
            # handler, which sleeps in growing steps (1, 2, 5, 10 ms...) while the other transaction runs.
            async with write_gate(self._engine), self._engine.begin() as conn:
                outcomes, uow = await work(conn)
        self.batches += 1
        # Committed: these are the ledger's states now (until another replica writes), for the pre-checks.
        self.recent.remember(uow.account_states(), uow.usage_states())
        if uow.wrote_events:
            self._on_commit()
        return outcomes

    async def _transaction(self, conn: Any, batch: list[Command], now: datetime) -> tuple[list[_Outcome], UnitOfWork]:
        """The batch's reads, commands and writes in the transaction `conn` is in (committed by the caller)."""
        head = (await conn.execute(_HEAD_FOR_UPDATE)).one()
        stored = await self._stored_answers(conn, batch)
        uow = UnitOfWork(conn, now, self.tier_source, self.test_owners)
        fresh = [c for c in batch if stored.get(c.method, c.scope, c.key) is None]
        await uow.load_accounts(a for c in fresh for a in c.accounts)
        if any(c.accounts for c in fresh):
            await uow.prefetch_limit_state(limit_day(now, self._limits_offset))
        outcomes: list[_Outcome] = []
        answers: dict[tuple[str, str | None, str], Answer] = {}
        for command in batch:
            prior = stored.get(command.method, command.scope, command.key) or _row_of(
                answers.get((command.method, command.scope, command.key)))
            if prior is not None:
                outcomes.append(_replay(prior, command))
                continue
            outcome, answer = await self._apply(uow, command, now)
            outcomes.append(outcome)
            if answer is not None:
                answers[(command.method, command.scope, command.key)] = answer
        sequence, head_hash = await uow.flush(head.sequence, head.hash)
        if answers:
            # The old table gets a mirror of each (see platform.idempotency); no race to check for here: the
            # previous release's writer takes the same head lock before it looks keys up.
            await record_answers(conn, idempotency, [a.row() for a in answers.values() if a.scope is not None],
                                 [a.row() for a in answers.values()])
        if sequence != head.sequence:
            await conn.execute(_MOVE_HEAD, {"b_sequence": sequence, "b_hash": head_hash})
        return outcomes, uow

    async def _apply(self, uow: UnitOfWork, command: Command, now: datetime) -> tuple[_Outcome, Answer | None]:
        token = uow.checkpoint(command.carrier)
        try:
            reply = command.render(await command.action(uow))
        except DomainError as error:
            uow.rollback(token)
            if isinstance(error, InvalidArgument) or error.kind == "unavailable":
                return _Outcome(error=error), None  # a corrected retry with the same key may succeed
            status = self._to_status(error)
            return _Outcome(error=error), _answer(command, now, refusal=status)
        if not command.record_success:
            return _Outcome(reply=reply), None
        return _Outcome(reply=reply), _answer(command, now, response=reply)

    async def _stored_answers(self, conn: Any, batch: list[Command]) -> Any:
        return await stored_answers(conn, idempotency, ((c.method, c.key) for c in batch))


def _answer(command: Command, now: datetime, *, response: Message | None = None,
            refusal: status_pb2.Status | None = None) -> Answer:
    return Answer.of(command.method, command.scope, command.key, command.fingerprint, response=response,
                     refusal=refusal, now=now)


def _row_of(answer: Answer | None) -> dict[str, Any] | None:
    return None if answer is None else answer.row()


def _replay(prior: Any, command: Command) -> _Outcome:
    try:
        return _Outcome(reply=replay_stored(prior, command.fingerprint, command.response_type))
    except (FailedPrecondition, StoredRefusal) as error:
        return _Outcome(error=error)


async def stored_answer(conn: Any, method: str, scope: str, key: str, fingerprint: bytes,
                        response_type: type[Message]) -> Message | None:
    """The answer stored for the caller's (method, key), or None for a key it has not used yet."""
    row = (await stored_answers(conn, idempotency, [(method, key)])).get(method, scope, key)
    return None if row is None else replay_stored(row, fingerprint, response_type)

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

import contextlib
import time
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
from finmesh.payments.usecases import metrics
from finmesh.platform.errors import DomainError, FailedPrecondition, InvalidArgument
from finmesh.platform.observability.telemetry import inject_context
from finmesh.platform.storage.group_commit import GroupCommitWriter
from finmesh.platform.storage.idempotency import Answer, StoredRefusal, record_answers, replay_stored, stored_answers
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread, write_transaction

Action = Callable[[UnitOfWork], Awaitable[Any]]

# Built once (see store.uow: building a statement costs more than running it).
_HEAD_FOR_UPDATE = select(audit_head.c.sequence, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
_MOVE_HEAD = (
    update(audit_head).where(audit_head.c.id == 1).values(sequence=bindparam("b_sequence"), hash=bindparam("b_hash"))
)


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
    # its refusal is final; the answer is recorded when the bank has spoken.
    record_success: bool = True
    # Runs in a batch of its own (settlement reads rows with queries that must see every earlier change).
    exclusive: bool = False
    # Accounts the command will touch: the writer loads a batch's accounts (and their owners' limit
    # state) in a few queries instead of a few per command.
    accounts: tuple[str, ...] = ()
    carrier: dict[str, str] = field(default_factory=inject_context)


class LedgerWriter(GroupCommitWriter[Command, Message]):
    def __init__(
        self,
        engine: AsyncEngine,
        tier_source: TierSource,
        to_status: Callable[[DomainError], status_pb2.Status],
        *,
        max_batch: int = 256,
        on_commit: Callable[[], None] | None = None,
        limits_utc_offset_minutes: int = 480,
        test_owners: frozenset[str] = frozenset(),
        thread: SqliteWriteThread | None = None,
    ) -> None:
        super().__init__(
            "payments-ledger", self._commit_commands, max_batch=max_batch, exclusive=lambda command: command.exclusive
        )
        self._limits_offset = limits_utc_offset_minutes
        self.test_owners = test_owners
        self._engine = engine
        # The paying customer's token tier first; `tier_source` (payments' table by default) for other callers.
        self.tier_source: TierSource = PrincipalTierSource(tier_source)
        self._to_status = to_status
        self._on_commit = on_commit or (lambda: None)
        self.recent = RecentStates()
        # On an SQLite file each batch's transaction runs whole on a write thread (its owner closes it): one
        # hand-off per batch instead of a greenlet and a driver-thread hop per statement (about fifteen a batch).
        # The commands' code is the same either way; PostgreSQL (and in-memory SQLite) keep the async engine.
        self._database: AsyncEngine | SqliteWriteThread = thread or engine

    async def prepare(self) -> None:
        """Create the audit head row if this is a fresh database."""
        async with self._engine.begin() as conn:
            if (await conn.execute(select(audit_head.c.id).where(audit_head.c.id == 1))).first() is None:
                with contextlib.suppress(IntegrityError):  # another replica created it first
                    await conn.execute(insert(audit_head).values(id=1, sequence=0, hash=GENESIS_HASH))

    async def _commit_commands(self, batch: list[Command], traces: list[Any]) -> list[Message | Exception]:
        """One batch's transaction; each command's reply, or its refusal (the callers' traces travel in their
        commands' carriers, taken where each command was made)."""
        now = datetime.now(UTC)
        start = time.perf_counter()
        outcomes, uow = await write_transaction(self._database, lambda conn: self._transaction(conn, batch, now))
        # Committed transactions only: a failed one is committed again in parts (group_commit), each recorded.
        metrics.ledger_commit_duration.record(time.perf_counter() - start)
        metrics.ledger_batch_size.record(len(batch))
        uow.committed()
        # Committed: these are the ledger's states now (until another replica writes), for the pre-checks.
        self.recent.remember(uow.account_states(), uow.usage_states())
        if uow.wrote_events:
            self._on_commit()
        return outcomes

    async def _transaction(
        self, conn: Any, batch: list[Command], now: datetime
    ) -> tuple[list[Message | Exception], UnitOfWork]:
        """The batch's reads, commands and writes in the transaction `conn` is in (committed by the caller)."""
        head = (await conn.execute(_HEAD_FOR_UPDATE)).one()
        stored = await self._stored_answers(conn, batch)
        uow = UnitOfWork(conn, now, self.tier_source, self.test_owners)
        fresh = [c for c in batch if stored.get(c.method, c.scope, c.key) is None]
        await uow.load_accounts(a for c in fresh for a in c.accounts)
        if any(c.accounts for c in fresh):
            await uow.prefetch_limit_state(limit_day(now, self._limits_offset))
        outcomes: list[Message | Exception] = []
        answers: dict[tuple[str, str | None, str], Answer] = {}
        for command in batch:
            prior = stored.get(command.method, command.scope, command.key) or _row_of(
                answers.get((command.method, command.scope, command.key))
            )
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
            await record_answers(
                conn,
                idempotency,
                [a.row() for a in answers.values() if a.scope is not None],
                [a.row() for a in answers.values()],
            )
        if sequence != head.sequence:
            await conn.execute(_MOVE_HEAD, {"b_sequence": sequence, "b_hash": head_hash})
        return outcomes, uow

    async def _apply(
        self, uow: UnitOfWork, command: Command, now: datetime
    ) -> tuple[Message | Exception, Answer | None]:
        token = uow.checkpoint(command.carrier)
        try:
            reply = command.render(await command.action(uow))
        except DomainError as error:
            uow.rollback(token)
            if isinstance(error, InvalidArgument) or error.kind == "unavailable":
                return error, None  # a corrected retry with the same key may succeed
            status = self._to_status(error)
            return error, _answer(command, now, refusal=status)
        if not command.record_success:
            return reply, None
        return reply, _answer(command, now, response=reply)

    async def _stored_answers(self, conn: Any, batch: list[Command]) -> Any:
        return await stored_answers(conn, idempotency, ((c.method, c.key) for c in batch))


def _answer(
    command: Command, now: datetime, *, response: Message | None = None, refusal: status_pb2.Status | None = None
) -> Answer:
    return Answer.of(
        command.method, command.scope, command.key, command.fingerprint, response=response, refusal=refusal, now=now
    )


def _row_of(answer: Answer | None) -> dict[str, Any] | None:
    return None if answer is None else answer.row()


def _replay(prior: Any, command: Command) -> Message | Exception:
    try:
        return replay_stored(prior, command.fingerprint, command.response_type)
    except (FailedPrecondition, StoredRefusal) as error:
        return error

"""Idempotency keys: the first answer to a caller's (method, key) is stored with the change and replayed byte for byte.

Keys belong to their caller, as Stripe scopes keys per account: the same key from another caller is an
independent operation, never IDEMPOTENCY_KEY_REUSED, so no customer can block another's keys or learn which
keys exist. The caller's scope (caller_scope) is the authenticated principal's subject; a service acting for
an end user adds the user its request names.

Two tables while that change rolls out (expand/contract, docs/DEPLOY.md):
- `scoped_idempotency_keys`, keyed (method, key, scope): what this code reads and writes;
- `idempotency_keys`, keyed (method, key): the previous release's table. This code also writes each answer
  there (a "mirror", marked with its scope) when the key is free in it, so a retry that lands on the previous
  release, on the other color or after a rollback, still finds the answer instead of running the operation
  again; and it still honours rows the previous release wrote (scope NULL: nobody knows whose they are, so
  they stand for every caller, as they did). A later release stops the mirror and drops the table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import (
    BindParameter,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.platform.auth.context import current_principal
from finmesh.platform.errors import DomainError, FailedPrecondition, FieldViolation, InvalidArgument
from finmesh.platform.observability.metrics import meter
from finmesh.platform.storage.sqlite_thread import insert_rows

M = TypeVar("M", bound=Message)
T = TypeVar("T")
# A use case generic in the reply it stores: the api names the concrete message type.
Reply = TypeVar("Reply", bound=Message)

MAX_KEY_LENGTH = 128
MAX_SCOPE_LENGTH = 200
# No authenticated caller: public RPCs (registration, login) and FINMESH_AUTH_MODE=off. They share one scope.
ANONYMOUS = ""
# The end user a service acts for, when its request names one (see caller_scope).
_ACTING_FOR_FIELD = "user_id"
_MAX_ACTING_FOR = 64


def _columns() -> list[Column[Any]]:
    return [
        Column("request_hash", LargeBinary(32), nullable=False),
        # Exactly one of response / refusal is set: a recorded refusal is
        # replayed as a refusal, never turned into a success by a retry.
        Column("response", LargeBinary, nullable=True),
        Column("refusal", LargeBinary, nullable=True),
        Column("status_code", Integer, nullable=False, default=0),
        Column("created_at", DateTime(timezone=True), nullable=False),
    ]


def scoped_idempotency_table(metadata: MetaData) -> Table:
    """Stored answers per caller. The key comes before the scope so that one indexed range serves a whole
    batch of keys from different callers (payments' ledger writer looks a batch up in one statement)."""
    return Table(
        "scoped_idempotency_keys",
        metadata,
        Column("method", String(100), primary_key=True),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        Column("scope", String(MAX_SCOPE_LENGTH), primary_key=True),
        *_columns(),
    )


def idempotency_table(metadata: MetaData) -> Table:
    """The previous release's table, global per method (dropped by a later contract release)."""
    return Table(
        "idempotency_keys",
        metadata,
        Column("method", String(100), primary_key=True),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        *_columns(),
        # The scope of a mirror this code wrote; NULL on rows the previous release wrote.
        Column("scope", String(MAX_SCOPE_LENGTH), nullable=True),
    )


@dataclass(frozen=True)
class IdempotencyTables:
    scoped: Table
    legacy: Table


def idempotency_tables(metadata: MetaData) -> IdempotencyTables:
    return IdempotencyTables(scoped_idempotency_table(metadata), idempotency_table(metadata))


def caller_scope(request: Message) -> str:
    """Whose key this is: the authenticated principal's subject.

    A service token acts for the end users of the calling service, so a service's scope is its subject plus
    the user its request names in `user_id` (SendNotification, AssessOnboarding, SetRiskTier): a service
    that uses one key for two users makes two operations, as those users would with their own tokens. No
    metadata carries an acting-for user today, and the requests that name none (FreezeAccount: an account)
    keep the service's own scope; services derive such keys from their own unique ids (an alert, a payment).
    """
    principal = current_principal()
    if principal is None:
        return ANONYMOUS
    if not principal.is_service:
        return principal.subject
    fields = request.DESCRIPTOR.fields_by_name
    user = getattr(request, _ACTING_FOR_FIELD) if _ACTING_FOR_FIELD in fields else ""
    if not isinstance(user, str) or not 0 < len(user) <= _MAX_ACTING_FOR or not user.isprintable():
        return principal.subject  # none named, or nothing a handler would accept as a user id anyway
    return f"{principal.subject}|{user}"  # subjects of service tokens have no "|"


def request_fingerprint(request: Message) -> bytes:
    """SHA-256 of the request without its idempotency key, in deterministic wire form."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def validate_key(key: str) -> None:
    if not key:
        raise InvalidArgument(FieldViolation("idempotency_key", "required on every mutating call"))
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidArgument(FieldViolation("idempotency_key", f"at most {MAX_KEY_LENGTH} printable characters"))


def derived_id_name(method: str, scope: str, key: str) -> str:
    """A name for ids derived from a caller's key (a payment id, a channel operation id): unambiguous
    whatever the parts contain, and never equal to the previous release's f"{method}:{key}"."""
    return json.dumps([method, scope, key], ensure_ascii=False)


class StoredRefusal(Exception):
    """A refusal recorded earlier for this key; the api layer re-sends it as it was."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


# --- stored answers: looked up and recorded in batches (payments' ledger writer) or one at a time -------


@dataclass(frozen=True)
class Answer:
    """The answer to one caller's key. `scope` None: nobody's in particular, for operations the previous
    release began (payments' sweeper finishing one): recorded in the old table only, as that release would."""

    method: str
    scope: str | None
    key: str
    request_hash: bytes
    response: bytes | None = None
    refusal: bytes | None = None
    status_code: int = 0
    created_at: datetime | None = None

    @classmethod
    def of(
        cls,
        method: str,
        scope: str | None,
        key: str,
        fingerprint: bytes,
        *,
        response: Message | None = None,
        refusal: status_pb2.Status | None = None,
        now: datetime | None = None,
    ) -> Answer:
        return cls(
            method,
            scope,
            key,
            fingerprint,
            response=response.SerializeToString(deterministic=True) if response is not None else None,
            refusal=refusal.SerializeToString() if refusal is not None else None,
            status_code=refusal.code if refusal is not None else 0,
            created_at=now or datetime.now(UTC),
        )

    def row(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "key": self.key,
            "scope": self.scope,
            "request_hash": self.request_hash,
            "response": self.response,
            "refusal": self.refusal,
            "status_code": self.status_code,
            "created_at": self.created_at,
        }


@cache
def _lookup_statement(tables: IdempotencyTables) -> Any:
    """One statement for the answers to one method's keys: every caller's rows of the new table and the
    previous release's own rows (its mirrors of ours are ours already). Built once per table pair."""
    s, o = tables.scoped.c, tables.legacy.c
    keys: BindParameter[Any] = bindparam("keys", expanding=True)
    return union_all(
        select(s.method, s.key, s.scope, s.request_hash, s.response, s.refusal).where(
            s.method == bindparam("method"), s.key.in_(keys)
        ),
        select(o.method, o.key, o.scope, o.request_hash, o.response, o.refusal).where(
            o.method == bindparam("method"), o.key.in_(keys), o.scope.is_(None)
        ),
    )


class StoredAnswers:
    """The answers found for a set of (method, key): each caller's own, else the previous release's."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str | None], Mapping[str, Any]] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        self._rows[(row["method"], row["key"], row["scope"])] = row

    def get(self, method: str, scope: str | None, key: str) -> Mapping[str, Any] | None:
        return self._rows.get((method, key, scope)) or self._rows.get((method, key, None))


async def stored_answers(conn: Any, tables: IdempotencyTables, wanted: Iterable[tuple[str, str]]) -> StoredAnswers:
    """The answers stored for `wanted` (method, key) pairs, whoever's they are: one indexed statement per
    method and 300 keys (a row-value IN on (method, key) made SQLite scan the table)."""
    by_method: dict[str, set[str]] = {}
    for method, key in wanted:
        by_method.setdefault(method, set()).add(key)
    found = StoredAnswers()
    for method, key_set in sorted(by_method.items()):
        keys = sorted(key_set)
        for start in range(0, len(keys), 300):
            result = await conn.execute(
                _lookup_statement(tables), {"method": method, "keys": keys[start : start + 300]}
            )
            for row in result:
                found.add(row._mapping)
    return found


@cache
def _mirror_statement(legacy: Table, dialect: str) -> Any:
    """INSERT into the old table that skips a key already there (another caller's, or the old release's)."""
    if dialect == "postgresql":
        return postgresql.insert(legacy).on_conflict_do_nothing()
    return sqlite.insert(legacy).on_conflict_do_nothing()


async def record_answers(
    conn: Any, tables: IdempotencyTables, scoped: list[dict[str, Any]], legacy: list[dict[str, Any]]
) -> int:
    """Store answer rows (Answer.row) in `conn`'s transaction: `scoped` in the new table (a key taken by the
    same caller is an IntegrityError, as before), `legacy` in the old one where the key is free. Returns how
    many old-table rows were written (-1 when the driver cannot tell)."""
    await insert_rows(conn, tables.scoped, scoped)
    if not legacy:
        return 0
    # One row alone, not as a list: a driver's executemany may not count the rows it wrote.
    result = await conn.execute(
        _mirror_statement(tables.legacy, conn.dialect.name), legacy[0] if len(legacy) == 1 else legacy
    )
    return result.rowcount if result.rowcount is not None else -1


_replays = meter("finmesh.platform.storage").create_counter(
    "finmesh.idempotency.replays",
    unit="{replay}",
    description="Calls answered with the answer stored under their idempotency key (a retry, not a new change)",
)


def count_replays_of(methods: Iterable[str]) -> None:
    """Start the replay counter of each of `methods` at zero, so its series exists before the first retry."""
    for method in methods:
        _replays.add(0, {"rpc.method": method})


def replay_stored(prior: Mapping[str, Any], fingerprint: bytes, response_type: type[M]) -> M:
    """The stored answer (a stored refusal is raised); IDEMPOTENCY_KEY_REUSED for another request.

    `prior`: the stored row, with the `method` it answers (the replay is counted under it)."""
    if prior["request_hash"] != fingerprint:
        raise FailedPrecondition(
            "IDEMPOTENCY_KEY_REUSED", "this idempotency key was already used with a different request"
        )
    # Every replay passes here (the stores', payments' writer and pre-check): the one place that counts them.
    _replays.add(1, {"rpc.method": prior["method"]})
    if prior["refusal"] is not None:
        raise StoredRefusal(status_pb2.Status.FromString(prior["refusal"]))
    return response_type.FromString(prior["response"])


class _KeyTakenMeanwhile(Exception):
    """The previous release stored an answer to this key after we looked: ours must not commit."""


@dataclass(frozen=True)
class KeyedCall(Generic[T, Reply]):
    """A mutating call under its caller's idempotency key, as an api hands it to a use case.

    The request (its key and caller name the answer), the method and reply type the answer is stored under,
    and how the use case's result becomes that reply. The use case stays free of the wire; the reply still
    commits in the change's transaction, so a retry after a crash gets the same bytes and the change happens
    once.
    """

    method: str
    request: Message
    reply_type: type[Reply]
    reply: Callable[[T], Reply]

    async def run(self, answers: IdempotencyStore, change: Callable[[AsyncConnection], Awaitable[T]]) -> Reply:
        """The stored answer to the key, or `change` made and its reply stored in one transaction."""
        prior = await self.replay(answers)
        return prior if prior is not None else await self.commit(answers, change)

    # Apart, for use cases that do outside work between the two (send a code, ask a registry, hash a password).

    async def replay(self, answers: IdempotencyStore) -> Reply | None:
        """The caller's stored answer (a stored refusal is raised), or None for a new key."""
        return await answers.replay(self.method, self.request, self.reply_type)

    async def commit(self, answers: IdempotencyStore, change: Callable[[AsyncConnection], Awaitable[T]]) -> Reply:
        """`change` made and its reply stored in one transaction (a refusal is stored as the answer too)."""
        return (await self.commit_own(answers, change))[0]

    async def commit_own(
        self, answers: IdempotencyStore, change: Callable[[AsyncConnection], Awaitable[T]]
    ) -> tuple[Reply, bool]:
        """commit(), and whether the answer is this call's own: a concurrent call with the same key may have
        committed first, and then its answer is the answer (that call made the change, and reports it)."""
        made: list[Reply] = []

        async def answered(conn: AsyncConnection) -> Reply:
            made.append(self.reply(await change(conn)))
            return made[-1]

        reply = await answers.commit(self.method, self.request, self.reply_type, answered)
        return reply, bool(made) and reply is made[-1]


class IdempotencyStore:
    """Runs a mutating operation at most once per caller and (method, key)."""

    def __init__(
        self, engine: AsyncEngine, tables: IdempotencyTables, to_status: Callable[[DomainError], status_pb2.Status]
    ):
        self._engine = engine
        self._tables = tables
        self._to_status = to_status

    async def run(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        operation: Callable[[AsyncConnection], Awaitable[M]],
    ) -> M:
        """Replay the stored answer, or run `operation` and store its answer in the same transaction."""
        prior = await self.replay(method, request, response_type)
        if prior is not None:
            return prior
        return await self.commit(method, request, response_type, operation)

    async def replay(self, method: str, request: Message, response_type: type[M]) -> M | None:
        """The stored answer for the caller's key (raising a stored refusal), or None for a new key.

        Callers that must call another service before writing use replay()
        first, make the outside call, then commit().
        """
        key: str = request.idempotency_key  # type: ignore[attr-defined]  # each request type given here has the field; Message declares none
        validate_key(key)
        prior = await self._lookup(method, caller_scope(request), key)
        return None if prior is None else self._replay(prior, request_fingerprint(request), response_type)

    async def commit(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        operation: Callable[[AsyncConnection], Awaitable[M]],
    ) -> M:
        """Run `operation` in a transaction that also stores its answer (or, on refusal, the refusal)."""
        key: str = request.idempotency_key  # type: ignore[attr-defined]  # each request type given here has the field; Message declares none
        scope = caller_scope(request)
        fingerprint = request_fingerprint(request)
        try:
            async with self._engine.begin() as conn:
                response = await operation(conn)
                await self._record(conn, Answer.of(method, scope, key, fingerprint, response=response))
            return response
        except DomainError as error:
            await self._record_refusal(Answer.of(method, scope, key, fingerprint), error)
            raise
        except (IntegrityError, _KeyTakenMeanwhile):
            # A concurrent call with the same key won the race; its answer stands.
            prior = await self._lookup(method, scope, key)
            if prior is None:
                raise
            return self._replay(prior, fingerprint, response_type)

    async def _lookup(self, method: str, scope: str, key: str) -> Any:
        async with self._engine.connect() as conn:
            found = await stored_answers(conn, self._tables, [(method, key)])
            await conn.rollback()
        return found.get(method, scope, key)

    def _replay(self, row: Mapping[str, Any], fingerprint: bytes, response_type: type[M]) -> M:
        return replay_stored(row, fingerprint, response_type)

    async def _record(self, conn: AsyncConnection, answer: Answer) -> None:
        scoped, legacy = self._rows(answer)
        if await record_answers(conn, self._tables, [scoped], [legacy]) == 0:
            # The old table has the key already. Another caller's mirror is no matter; a row of the previous
            # release (scope NULL) committed since we looked may be this caller's own retry on the other color.
            o = self._tables.legacy.c
            holder = (await conn.execute(select(o.scope).where(o.method == answer.method, o.key == answer.key))).first()
            if holder is not None and holder.scope is None:
                raise _KeyTakenMeanwhile

    def _rows(self, answer: Answer) -> tuple[dict[str, Any], dict[str, Any]]:
        """The new table's row and the old table's mirror of it (identity seals each differently)."""
        return answer.row(), answer.row()

    async def _record_refusal(self, answer: Answer, error: DomainError) -> None:
        if isinstance(error, InvalidArgument) or error.kind == "unavailable":
            return  # malformed or transient: a corrected retry with the same key may succeed
        status = self._to_status(error)
        refused = Answer.of(answer.method, answer.scope, answer.key, answer.request_hash, refusal=status)
        try:
            async with self._engine.begin() as conn:
                await self._record(conn, refused)
        except (IntegrityError, _KeyTakenMeanwhile):
            pass  # a concurrent call recorded its answer first

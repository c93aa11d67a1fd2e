"""Idempotency keys: the first answer to (method, key) is stored with the change and replayed byte for byte."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.platform.errors import DomainError, FailedPrecondition, FieldViolation, InvalidArgument

M = TypeVar("M", bound=Message)

MAX_KEY_LENGTH = 128


def idempotency_table(metadata: MetaData) -> Table:
    return Table(
        "idempotency_keys",
        metadata,
        Column("method", String(100), primary_key=True),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        Column("request_hash", LargeBinary(32), nullable=False),
        # Exactly one of response / refusal is set: a recorded refusal is
        # replayed as a refusal, never turned into a success by a retry.
        Column("response", LargeBinary, nullable=True),
        Column("refusal", LargeBinary, nullable=True),
        Column("status_code", Integer, nullable=False, default=0),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


def request_fingerprint(request: Message) -> bytes:
    """SHA-256 of the request without its idempotency key, in deterministic wire form."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("idempotency_key")  # type: ignore[arg-type]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def validate_key(key: str) -> None:
    if not key:
        raise InvalidArgument(FieldViolation("idempotency_key", "required on every mutating call"))
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidArgument(FieldViolation("idempotency_key", f"at most {MAX_KEY_LENGTH} printable characters"))


class StoredRefusal(Exception):
    """A refusal recorded earlier for this key; the api layer re-sends it as it was."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class IdempotencyStore:
    """Runs a mutating operation at most once per (method, key)."""

    def __init__(self, engine: AsyncEngine, table: Table, to_status: Callable[[DomainError], status_pb2.Status]):
        self._engine = engine
        self._table = table
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
        """The stored answer for this key (raising a stored refusal), or None for a new key.

        Callers that must call another service before writing use replay()
        first, make the outside call, then commit().
        """
        validate_key(request.idempotency_key)  # type: ignore[attr-defined]
        prior = await self._lookup(method, request.idempotency_key)  # type: ignore[attr-defined]
        return None if prior is None else self._replay(prior, request_fingerprint(request), response_type)

    async def commit(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        operation: Callable[[AsyncConnection], Awaitable[M]],
    ) -> M:
        """Run `operation` in a transaction that also stores its answer (or, on refusal, the refusal)."""
        key: str = request.idempotency_key  # type: ignore[attr-defined]
        fingerprint = request_fingerprint(request)
        try:
            async with self._engine.begin() as conn:
                response = await operation(conn)
                await conn.execute(insert(self._table).values(**self._row(method, key, fingerprint, response=response)))
            return response
        except DomainError as error:
            await self._record_refusal(method, key, fingerprint, error)
            raise
        except IntegrityError:
            # A concurrent call with the same key won the race; its answer stands.
            prior = await self._lookup(method, key)
            if prior is None:
                raise
            return self._replay(prior, fingerprint, response_type)

    async def _lookup(self, method: str, key: str) -> Any:
        t = self._table
        async with self._engine.connect() as conn:
            result = await conn.execute(select(t).where(t.c.method == method, t.c.key == key))
            row = result.first()
            await conn.rollback()
        return row

    def _replay(self, row: Any, fingerprint: bytes, response_type: type[M]) -> M:
        if row.request_hash != fingerprint:
            raise FailedPrecondition(
                "IDEMPOTENCY_KEY_REUSED", "this idempotency key was already used with a different request"
            )
        if row.refusal is not None:
            raise StoredRefusal(status_pb2.Status.FromString(row.refusal))
        return response_type.FromString(row.response)

    async def _record_refusal(self, method: str, key: str, fingerprint: bytes, error: DomainError) -> None:
        if isinstance(error, InvalidArgument) or error.kind == "unavailable":
            return  # malformed or transient: a corrected retry with the same key may succeed
        status = self._to_status(error)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(self._table).values(**self._row(method, key, fingerprint, refusal=status))
                )
        except IntegrityError:
            pass  # a concurrent call recorded its answer first

    @staticmethod
    def _row(method: str, key: str, fingerprint: bytes, *, response: Message | None = None,
             refusal: status_pb2.Status | None = None) -> dict[str, Any]:
        return {
            "method": method,
            "key": key,
            "request_hash": fingerprint,
            "response": response.SerializeToString(deterministic=True) if response is not None else None,
            "refusal": refusal.SerializeToString() if refusal is not None else None,
            "status_code": refusal.code if refusal is not None else 0,
            "created_at": datetime.now(UTC),
        }

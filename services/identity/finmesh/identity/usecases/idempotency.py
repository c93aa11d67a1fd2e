"""One call's idempotency key as its unit of work: a stored answer is replayed, a new one is committed in the
transaction of the change it answers (finmesh.platform.storage.idempotency).

Answers are stored as the caller got them, byte for byte, so the use cases take from the api a function
that builds the answer from their result, and call it inside the transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain.vault import Vault
from finmesh.platform.storage.idempotency import IdempotencyStore

M = TypeVar("M", bound=Message)
Operation = Callable[[AsyncConnection], Awaitable[M]]


@dataclass(frozen=True)
class Idempotent(Generic[M]):
    store: IdempotencyStore
    method: str
    request: Message  # as fingerprinted: secret fields already replaced by keyed hashes
    answer_type: type[M]

    async def replay(self) -> M | None:
        """The caller's stored answer (a stored refusal is raised), or None for a new key. Use cases that
        call another service before they write replay first, call, then commit."""
        return await self.store.replay(self.method, self.request, self.answer_type)

    async def commit(self, operation: Operation[M]) -> M:
        """Run `operation` in one transaction with the storing of its answer (or of its refusal)."""
        return await self.store.commit(self.method, self.request, self.answer_type, operation)

    async def commit_own(self, operation: Operation[M]) -> tuple[M, bool]:
        """commit(), and whether the answer is this operation's own: a concurrent call with the same key may
        have committed first, and then its answer is the answer (that call made the change, and reports it)."""
        made: list[M] = []

        async def recorded(conn: AsyncConnection) -> M:
            made.append(await operation(conn))
            return made[-1]

        reply = await self.commit(recorded)
        return reply, bool(made) and reply is made[-1]

    async def run(self, operation: Operation[M]) -> M:
        """replay(), else commit()."""
        return await self.store.run(self.method, self.request, self.answer_type, operation)


def fingerprinted(vault: Vault, request: Message, secret_fields: Sequence[str]) -> Message:
    """A copy with secret fields replaced by keyed hashes, for idempotency fingerprints.

    The idempotency table keeps a plain SHA-256 of each request; over a
    password or a six-digit code that would be an offline-guessable hash.
    """
    copy = type(request)()
    copy.CopyFrom(request)
    for name in secret_fields:
        value = getattr(copy, name)
        if value:
            setattr(copy, name, vault.mac("fingerprint", f"{name}:{value}"))
    return copy

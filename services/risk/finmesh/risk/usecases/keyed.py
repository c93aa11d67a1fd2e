"""A mutating call under its caller's idempotency key, as the api hands it to a use case."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.platform.storage.idempotency import IdempotencyStore

T = TypeVar("T")
R = TypeVar("R", bound=Message)


@dataclass(frozen=True)
class KeyedCall(Generic[T, R]):
    """The request (whose key and caller name the answer), the method and reply type it is stored under, and
    how the use case's result becomes that reply. The use case stays free of the wire; the reply still commits
    in the change's transaction, so a retry after a crash gets the same bytes and the change happens once."""

    method: str
    request: Message
    reply_type: type[R]
    reply: Callable[[T], R]

    async def run(self, answers: IdempotencyStore, change: Callable[[AsyncConnection], Awaitable[T]]) -> R:
        """The stored answer to the key, or `change` made and its reply stored in one transaction."""

        async def answered(conn: AsyncConnection) -> R:
            return self.reply(await change(conn))

        return await answers.run(self.method, self.request, self.reply_type, answered)

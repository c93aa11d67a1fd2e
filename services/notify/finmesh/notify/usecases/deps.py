"""What the use cases work with, wired once by the app, and how a mutating call runs once per idempotency key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.notify.config import NotifySettings
from finmesh.notify.store.sealing import Sealer
from finmesh.notify.usecases.clock import Clock
from finmesh.notify.usecases.compose import Composer
from finmesh.platform.storage.idempotency import IdempotencyStore

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Deps:
    engine: AsyncEngine
    idempotency: IdempotencyStore
    composer: Composer
    settings: NotifySettings
    clock: Clock
    # Nudges the send worker's lane (a category) once a commit has queued messages for it.
    wake: Callable[[str], None]

    @property
    def sealer(self) -> Sealer:
        return self.composer.sealer


@dataclass(frozen=True)
class Call(Generic[M]):
    """A mutating RPC as its idempotency key knows it: the method, the request (key, caller, fingerprint) and
    the reply the key stores. The reply is the contract's, so the api layer makes it: use cases take a
    function from their result to it."""

    method: str
    request: Message
    reply_type: type[M]

    async def once(self, deps: Deps, work: Callable[[AsyncConnection], Awaitable[M]]) -> M:
        """The reply stored for this key, else `work` in a new transaction that also stores its reply."""
        return await deps.idempotency.run(self.method, self.request, self.reply_type, work)

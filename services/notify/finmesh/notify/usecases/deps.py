"""What the use cases work with, wired once by the app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.config import NotifySettings
from finmesh.notify.store.sealing import Sealer
from finmesh.notify.usecases.clock import Clock
from finmesh.notify.usecases.compose import Composer
from finmesh.platform.storage.idempotency import IdempotencyStore


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

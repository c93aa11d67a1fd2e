"""Webhooks: systems subscribe to event types and get each matching event, signed with their own secret."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.store import webhooks
from finmesh.notify.usecases.deps import Deps
from finmesh.platform.storage.idempotency import KeyedCall, Reply


class Webhooks:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def create(self, call: KeyedCall[Mapping[str, Any], Reply], url: str, event_types: list[str]) -> Reply:
        """Register the endpoint with a new signing secret. The secret stays out of the row the reply is made
        from: stored replies are not sealed, so callers add it from signing_secret()."""
        d = self._deps

        async def work(conn: AsyncConnection) -> Mapping[str, Any]:
            webhook_id = str(uuid.uuid4())
            values = {
                "webhook_id": webhook_id,
                "url_sealed": d.sealer.seal(f"{webhook_id}:url", url),
                "event_types": event_types,
                "secret_sealed": d.sealer.seal(f"{webhook_id}:secret", "whsec_" + secrets.token_urlsafe(32)),
                "active": True,
                "created_at": d.clock.now(),
            }
            await webhooks.add(conn, values)
            return {**values, "url": url}

        return await call.run(d.idempotency, work)

    async def signing_secret(self, webhook_id: str) -> str:
        async with self._deps.engine.connect() as conn:
            hook = await webhooks.get(conn, webhook_id)
        return self._deps.sealer.open(f"{hook.webhook_id}:secret", hook.secret_sealed)

"""Clear personal data on purpose only (audited), erasure by crypto-shredding, and the access log (seed 3.4)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finmesh.identity.store import challenges, mfa, pii_log, sessions, users
from finmesh.identity.store.schema import outbox
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.users import UserView, load_user, view
from finmesh.platform.auth.context import accessor_id
from finmesh.platform.messaging.outbox import enqueue
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.privacy.pii import mask_text
from finmesh.platform.storage.db import aware
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")


@dataclass(frozen=True)
class PiiAccess:
    entry_id: int
    user_id: str
    accessor_id: str
    purpose: str
    fields: list[str]  # legal_name, id_number, phone, email
    accessed_at: datetime


async def reveal(d: Deps, user_id: str, fields: list[str], purpose: str) -> dict[str, str]:
    """The clear values of `fields` (legal_name, id_number, phone, email), once the access is on record."""
    # The access is on record (committed) before any clear value leaves this service.
    async with d.engine.begin() as conn:
        row = await load_user(conn, user_id)
        await pii_log.record(
            conn,
            user_id=row.user_id,
            accessor_id=accessor_id(),
            fields=fields,
            purpose=mask_text(purpose.strip()),
            now=d.now(),
        )
    _log.info("pii_revealed", user_id=row.user_id, accessor_id=accessor_id(), fields=fields)
    return {name: users.reveal(d.vault, row, name) for name in fields}


async def erase(d: Deps, call: KeyedCall[UserView, Reply], user_id: str) -> Reply:
    """EraseUser: the data key destroyed (every encrypted field with it), sessions revoked, open codes spent."""

    async def op(conn: Any) -> UserView:
        row = await load_user(conn, user_id, allow_erased=True)
        if row.erased_at is None:
            now = d.now()
            await users.erase(conn, row.user_id, now)
            await mfa.delete_totp(conn, row.user_id)
            await sessions.revoke_user(conn, row.user_id, now)
            await challenges.forget_user(conn, row.user_id, now)
            await enqueue(
                conn,
                outbox,
                event_type="identity.user.erased.v1",
                aggregate_id=row.user_id,
                user_id=row.user_id,
                payload={"user_id": row.user_id},
            )
        return view(await users.get_user(conn, row.user_id))

    reply = await call.run(d.idem, op)
    d.on_commit()
    _log.info("user_erased", user_id=user_id, accessor_id=accessor_id())
    return reply


async def access_log(d: Deps, user_id: str, after_id: int, size: int) -> tuple[list[PiiAccess], bool]:
    """ListPiiAccessLog: up to `size` entries after `after_id` (of one user, or all when user_id is ""), and
    whether more follow."""
    async with d.engine.connect() as conn:
        rows = await pii_log.page(conn, user_id=user_id, after_id=after_id, limit=size + 1)
    entries = [
        PiiAccess(
            r.id, r.user_id, r.accessor_id, r.purpose, [f for f in r.fields.split(",") if f], aware(r.accessed_at)
        )
        for r in rows[:size]
    ]
    return entries, len(rows) > size

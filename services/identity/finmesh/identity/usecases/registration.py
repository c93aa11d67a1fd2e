"""RegisterUser: the identity-number check is the first of the three onboarding steps, passed at registration."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError

from finmesh.identity.domain.registration import Registration
from finmesh.identity.store import users
from finmesh.identity.store.schema import outbox
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.users import UserView, view
from finmesh.platform.errors import AlreadyExists
from finmesh.platform.messaging.outbox import enqueue
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")

# The same words whichever value is taken, and whoever holds it: no enumeration of users.
_DUPLICATE = "an account with some of these details already exists"


async def register_user(d: Deps, call: KeyedCall[UserView, Reply], reg: Registration) -> Reply:
    prior = await call.replay(d.idem)
    if prior is not None:
        return prior
    # argon2 is deliberately slow: keep it off the event loop.
    password_hash = await asyncio.to_thread(d.hasher.hash, reg.password)
    user_id = str(uuid.uuid4())

    async def create(conn: Any) -> UserView:
        if await users.any_holds(conn, d.vault, reg):
            raise AlreadyExists("DUPLICATE_IDENTITY", _DUPLICATE)
        row = await users.insert_user(conn, d.vault, user_id, reg, password_hash, roles=reg.kind)
        await enqueue(
            conn,
            outbox,
            event_type="identity.user.registered.v1",
            aggregate_id=user_id,
            user_id=user_id,
            payload={"user_id": user_id, "kind": reg.kind, "locale": reg.locale},
        )
        return view(row)

    try:
        reply, own = await call.commit_own(d.idem, create)
    except IntegrityError:
        raise AlreadyExists("DUPLICATE_IDENTITY", _DUPLICATE) from None  # lost a race on a blind index
    d.on_commit()
    if own:
        _log.info("user_registered", user_id=user_id, kind=reg.kind)
    return reply

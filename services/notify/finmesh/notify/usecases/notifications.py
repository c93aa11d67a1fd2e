"""Sending a notification on request (SendNotification), and reading what was sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.consent import decide_marketing
from finmesh.notify.domain.templates import resolve_locale
from finmesh.notify.store import consents, erasure, profiles, queue
from finmesh.notify.usecases.compose import Draft
from finmesh.notify.usecases.deps import Deps
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_REFUSALS = {
    "CONSENT_MISSING": "marketing needs the user's recorded consent",
    "OPTED_OUT": "the user opted out of marketing messages",
}


@dataclass(frozen=True)
class SendRequest:
    user_id: str
    channel: str  # SMS | EMAIL | INBOX
    category: str
    template: str
    locale: str  # "" for the user's
    params: dict[str, str]
    address: str


class Notifications:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def send(self, call: KeyedCall[Mapping[str, Any], Reply], send: SendRequest) -> Reply:
        """Record the message: the inbox's is delivered by that, the rest are queued for the worker. Marketing
        needs the user's consent, and waits out their quiet hours."""
        d = self._deps

        async def work(conn: AsyncConnection) -> Mapping[str, Any]:
            now = d.clock.now()
            await erasure.refuse_if_erased(conn, send.user_id)
            not_before = None
            if send.category == "MARKETING":
                record = consents.to_record(await consents.get(conn, send.user_id, "MARKETING"))
                decision = decide_marketing(record, now)
                if not decision.send:
                    raise FailedPrecondition(decision.refusal, _REFUSALS[decision.refusal])
                not_before = decision.not_before
            known = await profiles.locales(conn, {send.user_id})
            draft = Draft(
                send.user_id,
                send.channel,
                send.category,
                send.template,
                resolve_locale(send.locale, known.get(send.user_id, "")),
                send.params,
                address=send.address,
            )
            row = d.composer.row(draft, now, not_before)
            await queue.add(conn, [row])
            return row

        answer = await call.run(d.idempotency, work)
        if send.channel != "INBOX":  # queued (a repeat's stored answer too): the worker may have it now
            d.wake(send.category)
        return answer

    async def get(self, notification_id: str) -> Any:
        async with self._deps.engine.connect() as conn:
            return await queue.get(conn, notification_id)

    async def of_user(self, user_id: str, after: str, limit: int) -> list[Any]:
        async with self._deps.engine.connect() as conn:
            return await queue.list_for_user(conn, user_id, after, limit)

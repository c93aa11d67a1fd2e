"""The last onboarding step: the verified event and risk's tier, in the transaction that passes it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.clients.risk import AssessmentFailed
from finmesh.identity.domain.id_number import age_on, parse_id_number
from finmesh.identity.domain.onboarding import completes_onboarding, fully_verified
from finmesh.identity.domain.residence import country_of_residence
from finmesh.identity.store import users
from finmesh.identity.store.schema import outbox
from finmesh.identity.usecases.deps import Deadline, Deps
from finmesh.identity.usecases.tiers import set_tier, write_tier
from finmesh.platform.messaging.outbox import enqueue
from finmesh.platform.observability.logs import get_logger

_log = get_logger("finmesh.identity")


async def tier_for_last_step(d: Deps, row: Any, step: str, deadline: Deadline) -> str:
    """Risk's tier for a user whom `step` is about to verify, else "".

    Asked before the step commits, so the tier is written in the step's transaction and the step's
    reply (stored for replays) shows the tier the next token will carry. Best effort: risk down, the
    tier stays unset (payments applies its default tier) until a later call or a risk officer sets it.
    """
    if d.risk is None or not completes_onboarding(row, step):
        return ""
    # Age from the verified identity number: decrypted here, never logged or returned.
    id_number = users.reveal(d.vault, row, "id_number")
    age = age_on(parse_id_number(id_number, d.today()).birth_date, d.today())
    try:
        return await d.risk.onboarding_tier(user_id=row.user_id, age_years=age, kind=row.kind, timeout=deadline())
    except AssessmentFailed as error:
        _log.warning("onboarding_assessment_failed", user_id=row.user_id, code=error.code)
        return ""


async def record_verified(conn: AsyncConnection, row: Any, tier: str) -> Any:
    """In the transaction that passed a step: if that was the last, tell the mesh the user may now transact
    and record the onboarding tier (if risk gave one). The user's row as it now stands."""
    if not fully_verified(row):
        return row
    await enqueue(
        conn,
        outbox,
        event_type="identity.user.verified.v1",
        aggregate_id=row.user_id,
        user_id=row.user_id,
        # A code, not the document it was read from: what risk's geography rule needs and no more.
        payload={"user_id": row.user_id, "country_of_residence": country_of_residence()},
    )
    if not tier or row.risk_tier != "UNSPECIFIED":
        return row
    await write_tier(conn, row.user_id, tier, "ONBOARDING")
    _log.info("risk_tier_set", user_id=row.user_id, tier=tier, reason="ONBOARDING")
    return await users.get_user(conn, row.user_id)


async def assess_if_ready(d: Deps, user_id: str, deadline: Deadline) -> None:
    """After a step committed: if the user is verified yet untiered (the other step passed meanwhile, so
    the tier was not asked before), ask risk now."""
    async with d.engine.connect() as conn:
        row = await users.get_user(conn, user_id)
    if row is None or not fully_verified(row) or row.risk_tier != "UNSPECIFIED":
        return
    tier = await tier_for_last_step(d, row, "real_name", deadline)
    if tier:
        await set_tier(d, user_id, tier, "ONBOARDING")

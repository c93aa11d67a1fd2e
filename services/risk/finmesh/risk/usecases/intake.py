"""Risk's event intake: identity's user events, deduped by event id and applied in one transaction per batch.

- identity.user.verified.v1: the user's country of residence, which the geography rule compares with a
  payment's IP country when payments asks for an assessment (finmesh.risk.usecases.assessing).
- identity.user.tier_changed.v1: the tier, kept in step with identity. Only recorded: risk's own
  SetRiskTier calls (an incident raises the payer to HIGH) come back as such events, and answering one with
  another call would loop.
- identity.user.erased.v1: what risk keeps that points at the person is removed, and the erasure recorded
  (finmesh.risk.store.user_profiles.erase).

Events come in request order, which the relay keeps per aggregate (the user); the dedupe row and the
change commit together, so a redelivered event is answered as a duplicate and applied once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import write_gate
from finmesh.risk.domain.user_events import Change, UserChange
from finmesh.risk.store import subjects, user_profiles
from finmesh.risk.store.user_profiles import Taken

_log = get_logger("finmesh.risk.intake")


@dataclass(frozen=True)
class IncomingEvent:
    envelope: Taken
    change: UserChange


class UserEventIntake:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def deliver_batch(self, events: Sequence[IncomingEvent]) -> list[bool]:
        """Per event, in order: True when it was a duplicate (taken before, or earlier in this batch)."""
        for _ in range(2):
            try:
                return await self._take(events)
            except IntegrityError:  # a concurrent delivery of the same ids on another replica: look again
                _log.warning("event_batch_conflict", events=len(events))
        return [(await self._take([event]))[0] for event in events]

    async def _take(self, events: Sequence[IncomingEvent]) -> list[bool]:
        now = datetime.now(UTC)
        unique: dict[str, IncomingEvent] = {}
        for event in events:
            unique.setdefault(event.envelope.event_id, event)
        applied: list[IncomingEvent] = []
        async with write_gate(self._engine), self._engine.begin() as conn:
            fresh = await user_profiles.record_events(conn, [e.envelope for e in unique.values()], now)
            for event_id, event in unique.items():
                if event_id in fresh:
                    await _apply(conn, event, now)
                    applied.append(event)
        taken = {e.envelope.event_id for e in applied}
        duplicates = []
        for event in events:
            duplicates.append(event.envelope.event_id not in taken)
            taken.discard(event.envelope.event_id)
        for event in applied:
            if event.change.change is not Change.NONE:
                _log.info(
                    "user_event_applied",
                    event_id=event.envelope.event_id,
                    event_type=event.envelope.event_type,
                    user_id=event.change.user_id,
                )
        return duplicates


async def _apply(conn: AsyncConnection, event: IncomingEvent, now: datetime) -> None:
    change, sequence = event.change, event.envelope.sequence
    if change.change is Change.NONE:
        return
    # The payer's row lock, as an assessment takes it: an erasure never interleaves with an assessment that
    # is writing the same user's IP address and device.
    await subjects.lock(conn, f"user:{change.user_id}", now)
    if change.change is Change.ERASURE:
        forgotten = await user_profiles.erase(conn, change.user_id, event.envelope.event_id, now)
        _log.info(
            "user_forgotten",
            event_id=event.envelope.event_id,
            devices=forgotten.devices,
            assessments=forgotten.assessments,
        )
    elif change.change is Change.TIER:
        await user_profiles.set_tier(conn, change.user_id, change.tier, sequence, now)
    elif not await user_profiles.is_erased(conn, change.user_id):
        await user_profiles.set_residence(conn, change.user_id, change.country, sequence, now)

"""Complaint tickets (seed 3.3): accept within 24 h, respond within 2 and resolve within 5 business days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from finmesh.notify.domain.business_days import BusinessCalendar
from finmesh.platform.errors import FailedPrecondition

OPEN, ACCEPTED, RESPONDED, RESOLVED = "OPEN", "ACCEPTED", "RESPONDED", "RESOLVED"
ORDER = (OPEN, ACCEPTED, RESPONDED, RESOLVED)

ACCEPT_WITHIN = timedelta(hours=24)
RESPOND_BUSINESS_DAYS = 2
RESOLVE_BUSINESS_DAYS = 5

# Each deadline stage, and the state that meets it.
STAGES = (("accept", ACCEPTED), ("respond", RESPONDED), ("resolve", RESOLVED))


@dataclass(frozen=True)
class Deadlines:
    accept_due: datetime
    respond_due: datetime
    resolve_due: datetime

    def due(self, stage: str) -> datetime:
        return {"accept": self.accept_due, "respond": self.respond_due, "resolve": self.resolve_due}[stage]


def deadlines(opened_at: datetime, calendar: BusinessCalendar) -> Deadlines:
    """All three clocks start when the complaint is opened."""
    return Deadlines(
        accept_due=opened_at + ACCEPT_WITHIN,
        respond_due=calendar.add_business_days(opened_at, RESPOND_BUSINESS_DAYS),
        resolve_due=calendar.add_business_days(opened_at, RESOLVE_BUSINESS_DAYS),
    )


def check_transition(current: str, target: str) -> None:
    """Complaints move one step at a time: accept, then respond, then resolve."""
    if target not in ORDER[1:]:
        raise ValueError(target)
    if ORDER.index(target) != ORDER.index(current) + 1:
        raise FailedPrecondition(
            "INVALID_STATE", f"a complaint in state {current} cannot move to {target}", state=current
        )


def breached_stages(state: str, deadlines: Deadlines, now: datetime, already: set[str]) -> list[str]:
    """Stages whose deadline passed before the complaint reached them, not yet escalated."""
    reached = ORDER.index(state)
    return [
        stage
        for stage, meets in STAGES
        if ORDER.index(meets) > reached and now >= deadlines.due(stage) and stage not in already
    ]

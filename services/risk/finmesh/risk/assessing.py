"""Assessing one payment: gather its features from the shared database, score it, and record the outcome.

Everything an assessment writes (the assessment, the device it came from,
AML reports, an incident and the operator alert event) commits in one
transaction, under the payer's lock, so replicas never count a payer's
velocity concurrently and an incident is raised once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.platform.db import write_gate
from finmesh.platform.money import Money
from finmesh.platform.outbox import enqueue
from finmesh.risk.domain import aml
from finmesh.risk.domain.rules import Rules
from finmesh.risk.domain.scoring import PaymentFeatures, Verdict, assess, is_new_device
from finmesh.risk.domain.values import AmlKind, BlockKind, Subject, Tier, WarningLevel
from finmesh.risk.domain.windows import window_start
from finmesh.risk.store import alerts, assessments, blocklist, subjects
from finmesh.risk.store import aml as aml_store
from finmesh.risk.store.schema import outbox

ALERT_EVENT = "risk.alert.raised.v1"


@dataclass(frozen=True)
class PaymentFacts:
    """What the caller told risk about one payment (already validated)."""

    payment_id: str
    payer_user_id: str
    payer_account_id: str
    payee_account_id: str
    amount: Money
    tier: Tier = Tier.UNSPECIFIED
    device_id: str = ""
    ip_address: str = ""
    ip_country: str = ""
    home_country: str = ""
    synthetic: bool = False

    @property
    def lock_key(self) -> str:
        return f"user:{self.payer_user_id}" if self.payer_user_id else f"account:{self.payer_account_id}"


@dataclass(frozen=True)
class Outcome:
    row: Any  # the assessment row
    raised_alert: bool = False  # a new incident: wake the relay and the emergency responder


async def assess_payment(engine: AsyncEngine, rules: Rules, facts: PaymentFacts, now: datetime) -> Outcome:
    """Assess once per payment id; a concurrent or repeated call gets the recorded assessment."""
    try:
        async with write_gate(engine), engine.begin() as conn:
            await subjects.lock(conn, facts.lock_key, now)
            prior = await assessments.find_by_payment(conn, facts.payment_id)
            if prior is not None:
                return Outcome(prior)
            return await _assess_locked(conn, rules, facts, now)
    except IntegrityError:
        # Two calls for one payment id under different lock keys (the caller changed the payer): first wins.
        async with engine.connect() as conn:
            row = await assessments.find_by_payment(conn, facts.payment_id)
        if row is None:
            raise
        return Outcome(row)


async def _assess_locked(conn: AsyncConnection, rules: Rules, facts: PaymentFacts, now: datetime) -> Outcome:
    features, earlier, known_device = await _features(conn, rules, facts, now)
    verdict = assess(features, rules)
    row = await assessments.insert_assessment(
        conn,
        assessment_id=str(uuid.uuid4()),
        payment_id=facts.payment_id,
        user_id=facts.payer_user_id,
        account_id=facts.payer_account_id,
        payee_account_id=facts.payee_account_id,
        currency=facts.amount.currency,
        amount=facts.amount.minor_units,
        device_id=facts.device_id,
        ip_address=facts.ip_address,
        ip_country=facts.ip_country,
        home_country=facts.home_country,
        tier=facts.tier.value,
        score=verdict.score,
        decision=verdict.decision.value,
        warning_level=verdict.warning_level.value,
        reasons=[{"code": r.code, "score": r.score, "detail": r.detail} for r in verdict.reasons],
        rules_version=rules.version,
        synthetic=int(facts.synthetic),
        created_at=now,
    )
    if facts.payer_user_id and facts.device_id and not known_device:
        await subjects.remember_device(conn, facts.payer_user_id, facts.device_id, now)
    if facts.synthetic:
        return Outcome(row)  # load-test traffic is scored like any other, but files no report and freezes nothing
    await _file_aml_reports(conn, rules, facts, verdict, earlier, now)
    raised = await _raise_incident(conn, rules, facts, verdict, now)
    return Outcome(row, raised_alert=raised)


async def _features(conn: AsyncConnection, rules: Rules, facts: PaymentFacts,
                    now: datetime) -> tuple[PaymentFeatures, list[Any], bool]:
    subject_values = {Subject.USER: facts.payer_user_id, Subject.DEVICE: facts.device_id,
                      Subject.IP: facts.ip_address}
    tallies = await assessments.tallies(conn, subject_values, rules.velocity_windows(), facts.amount.currency, now)
    known, has_devices = False, False
    if facts.payer_user_id and facts.device_id:
        known, has_devices = await subjects.device_history(conn, facts.payer_user_id, facts.device_id)
    hits = await blocklist.hits(conn, [
        (BlockKind.USER.value, facts.payer_user_id),
        (BlockKind.DEVICE.value, facts.device_id),
        (BlockKind.IP.value, facts.ip_address),
        (BlockKind.ACCOUNT.value, facts.payer_account_id),
        (BlockKind.ACCOUNT.value, facts.payee_account_id),
    ], now)
    payer_hits = {(BlockKind.USER, facts.payer_user_id), (BlockKind.DEVICE, facts.device_id),
                  (BlockKind.IP, facts.ip_address), (BlockKind.ACCOUNT, facts.payer_account_id)}
    blocked = frozenset(kind for kind, value in payer_hits if value and (kind.value, value) in hits)
    earlier = await _earlier_just_under(conn, rules, facts, now)
    features = PaymentFeatures(
        amount=facts.amount,
        tier=facts.tier,
        tallies=tallies,
        new_device=is_new_device(known=known, user_has_devices=has_devices),
        blocked=blocked,
        payee_blocked=(BlockKind.ACCOUNT.value, facts.payee_account_id) in hits,
        ip_country=facts.ip_country,
        home_country=facts.home_country,
        earlier_just_under=len(earlier),
    )
    return features, earlier, known


async def _earlier_just_under(conn: AsyncConnection, rules: Rules, facts: PaymentFacts, now: datetime) -> list[Any]:
    rule = rules.aml.structuring
    if facts.synthetic or not facts.payer_user_id or not aml.is_just_under(facts.amount, rule):
        return []  # only a payment that is itself just under the threshold can complete the pattern
    low, high = aml.just_under_range(facts.amount.currency, rule) or (0, 0)
    return await assessments.earlier_just_under(conn, facts.payer_user_id, facts.amount.currency, low, high,
                                                window_start(now, rule.window_seconds))


async def _file_aml_reports(conn: AsyncConnection, rules: Rules, facts: PaymentFacts, verdict: Verdict,
                            earlier: list[Any], now: datetime) -> None:
    structuring_since = window_start(now, rules.aml.structuring.window_seconds)
    already = bool(earlier) and await aml_store.reported_since(
        conn, facts.payer_user_id, AmlKind.STRUCTURING.value, structuring_since)
    for kind in aml.reports_due(facts.amount, verdict.decision, len(earlier), already, rules.aml):
        payments = [(facts.payment_id, facts.amount.minor_units)]
        if kind is AmlKind.STRUCTURING:
            payments = [(r.payment_id, int(r.amount)) for r in earlier] + payments
        await aml_store.file_report(
            conn,
            report_id=str(uuid.uuid4()),
            kind=kind.value,
            user_id=facts.payer_user_id,
            payment_id=facts.payment_id,
            payment_ids=[p for p, _ in payments],
            currency=facts.amount.currency,
            total=sum(a for _, a in payments),
            rules_version=rules.version,
            created_at=now,
        )


async def _raise_incident(conn: AsyncConnection, rules: Rules, facts: PaymentFacts, verdict: Verdict,
                          now: datetime) -> bool:
    """Open an incident for a critical warning, unless the account already has one open."""
    if verdict.warning_level is not WarningLevel.CRITICAL:
        return False
    since = window_start(now, rules.emergency.incident_window_seconds)
    if await alerts.open_incident(conn, facts.payer_account_id, since) is not None:
        return False  # the open incident's freeze and alert cover this payment too
    alert_id = str(uuid.uuid4())
    reasons = [r.code for r in verdict.reasons]
    # The payer's lock is held, so this account's events get their sequence numbers in commit order.
    event_id = await enqueue(
        conn, outbox, event_type=ALERT_EVENT, aggregate_id=facts.payer_account_id, user_id=facts.payer_user_id,
        payload={"alert_id": alert_id, "level": verdict.warning_level.value, "user_id": facts.payer_user_id,
                 "account_id": facts.payer_account_id, "payment_id": facts.payment_id, "reasons": reasons},
    )
    await alerts.insert_alert(
        conn,
        alert_id=alert_id,
        level=verdict.warning_level.value,
        user_id=facts.payer_user_id,
        account_id=facts.payer_account_id,
        payment_id=facts.payment_id,
        reasons=[{"code": r.code, "score": r.score, "detail": r.detail} for r in verdict.reasons],
        rules_version=rules.version,
        event_id=event_id,
        created_at=now,
        emergency_response_done=False,
        attempts=0,
        next_attempt_at=now,
        parked=False,
        last_error="",
    )
    return True

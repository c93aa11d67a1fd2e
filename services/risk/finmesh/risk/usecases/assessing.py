"""Assessing payments: gather their features from the shared database, score them, and record the outcomes.

Assessments come in batches (see writer.py): everything a batch writes (the
assessments, the devices they came from, AML reports, incidents and their
operator alert events) commits in one transaction, under the locks of all of
the batch's payers, so replicas never count a payer's velocity concurrently
and an incident is raised once. Inside a batch payments are decided one
after the other, each seeing the ones before it (domain.activity), as if
each had committed alone.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

from opentelemetry import context as otel_context
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.platform.messaging.outbox import enqueue
from finmesh.platform.money import Money
from finmesh.platform.storage.db import write_gate
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread
from finmesh.risk.domain import aml
from finmesh.risk.domain.activity import RecentActivity
from finmesh.risk.domain.rules import Rules
from finmesh.risk.domain.scoring import PaymentFeatures, Verdict, assess, is_new_device
from finmesh.risk.domain.values import AmlKind, BlockKind, Decision, Subject, Tier, WarningLevel
from finmesh.risk.domain.windows import window_start
from finmesh.risk.store import alerts, assessments, batch_reads, subjects
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

    @property
    def subject_values(self) -> dict[Subject, str]:
        return {Subject.USER: self.payer_user_id, Subject.DEVICE: self.device_id, Subject.IP: self.ip_address}

    def block_candidates(self) -> list[tuple[str, str]]:
        return [
            (BlockKind.USER.value, self.payer_user_id),
            (BlockKind.DEVICE.value, self.device_id),
            (BlockKind.IP.value, self.ip_address),
            (BlockKind.ACCOUNT.value, self.payer_account_id),
            (BlockKind.ACCOUNT.value, self.payee_account_id),
        ]


@dataclass(frozen=True)
class Outcome:
    row: Any  # the assessment row
    raised_alert: bool = False  # a new incident: wake the relay and the emergency responder
    fresh: bool = False  # assessed in this batch (not a recorded verdict answered again): counted once committed


async def assess_payments(
    database: AsyncEngine | SqliteWriteThread,
    rules: Rules,
    batch: Sequence[PaymentFacts],
    now: datetime,
    traces: Sequence[Any] | None = None,
) -> list[Outcome]:
    """Assess each payment once per payment id; a repeated id gets the recorded assessment.

    A batch that fails (a payment id recorded meanwhile by another replica
    under another payer, a row the database refuses) raises; the writer
    commits it again in halves without the payments that fail it
    (finmesh.platform.storage.group_commit), and a single payment whose id was
    recorded meanwhile gets that record. `traces` are the callers' trace
    contexts (OpenTelemetry), one per payment: the alert event
    a payment raises carries its caller's trace. On an SQLite file the batch's transaction runs whole on
    the writer's thread (finmesh.platform.storage.sqlite_thread), the same statements in the same order.
    """
    traced = traces or [None] * len(batch)
    try:
        if isinstance(database, SqliteWriteThread):
            # The thread's connection answers every call the stores make of an AsyncConnection (execute, scalar,
            # dialect): the same store code runs on either.
            return await database.transaction(
                lambda conn: _assess_batch(cast(AsyncConnection, conn), rules, batch, now, traced)
            )
        async with write_gate(database), database.begin() as conn:
            return await _assess_batch(conn, rules, batch, now, traced)
    except IntegrityError:
        if len(batch) != 1:
            raise
        # Two calls for one payment id under different lock keys (the caller changed the payer): first wins.
        engine = database.engine if isinstance(database, SqliteWriteThread) else database
        async with engine.connect() as conn:
            row = await assessments.find_by_payment(conn, batch[0].payment_id)
        if row is None:
            raise
        return [Outcome(row)]


class _Batch:
    """What one batch's transaction reads once and then keeps up to date in memory."""

    def __init__(
        self, conn: AsyncConnection, rules: Rules, now: datetime, activity: RecentActivity, listed: set[tuple[str, str]]
    ) -> None:
        self.conn, self.rules, self.now = conn, rules, now
        self.activity = activity
        self.listed = listed
        self.pending: list[dict[str, Any]] = []  # assessment rows not yet inserted
        self.new_devices: list[tuple[str, str]] = []

    async def flush(self) -> None:
        """Insert the pending rows: before anything reads the assessments table again."""
        await assessments.insert_many(self.conn, self.pending)
        self.pending = []


async def _assess_batch(
    conn: AsyncConnection, rules: Rules, facts: Sequence[PaymentFacts], now: datetime, traces: Sequence[Any]
) -> list[Outcome]:
    await subjects.lock_many(conn, (f.lock_key for f in facts), now)
    windows = {subject: tuple(sorted(seconds)) for subject, seconds in rules.velocity_windows().items() if seconds}
    reads = await batch_reads.read(
        conn,
        payment_ids=[f.payment_id for f in facts],
        device_users=[f.payer_user_id for f in facts if f.device_id],
        block_candidates=[c for f in facts for c in f.block_candidates()],
        velocity={s: (w, [f.subject_values[s] for f in facts]) for s, w in windows.items()},
        now=now,
        # Payments does not know the payer's home country: risk learned it from identity's events.
        residents=[f.payer_user_id for f in facts if not f.home_country],
    )
    if reads.countries:
        facts = [_with_home_country(f, reads.countries) for f in facts]
    # Replays are rare: only they fetch whole stored rows.
    recorded = await assessments.find_by_payments(conn, reads.recorded) if reads.recorded else {}
    batch = _Batch(conn, rules, now, RecentActivity.of(windows, reads.totals, reads.devices), reads.listed)
    outcomes: dict[str, Outcome] = {pid: Outcome(row) for pid, row in recorded.items()}
    answers = []
    for f, trace in zip(facts, traces, strict=True):
        if f.payment_id not in outcomes:  # a payment named twice in one batch is assessed once
            token = otel_context.attach(trace) if trace is not None else None
            try:
                outcomes[f.payment_id] = await _assess_one(batch, f)
            finally:
                if token is not None:
                    otel_context.detach(token)
            answers.append(outcomes[f.payment_id])
        else:
            answers.append(Outcome(outcomes[f.payment_id].row))
    await batch.flush()
    await subjects.remember_devices(conn, batch.new_devices, now)
    return answers


def _with_home_country(facts: PaymentFacts, countries: dict[str, str]) -> PaymentFacts:
    """The payer's country of residence from identity's events (finmesh.risk.usecases.intake), where the caller
    sent none: recorded with the assessment, so its reasons can be read again later."""
    country = countries.get(facts.payer_user_id, "") if not facts.home_country else ""
    return dataclasses.replace(facts, home_country=country) if country else facts


async def _assess_one(batch: _Batch, facts: PaymentFacts) -> Outcome:
    rules, now = batch.rules, batch.now
    features, earlier, known_device = await _features(batch, facts)
    verdict = assess(features, rules)
    values = dict(
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
    batch.pending.append(values)
    batch.activity.record(
        facts.subject_values,
        facts.amount.currency,
        facts.amount.minor_units,
        declined=verdict.decision is Decision.DECLINE,
        user=facts.payer_user_id,
        device=facts.device_id,
        velocity=not facts.synthetic,
    )
    if facts.payer_user_id and facts.device_id and not known_device:
        batch.new_devices.append((facts.payer_user_id, facts.device_id))
    row = SimpleNamespace(**values)  # what the inserted row will read back as
    if facts.synthetic:
        return Outcome(row, fresh=True)  # load-test traffic is scored like any other, but files and freezes nothing
    await _file_aml_reports(batch.conn, rules, facts, verdict, earlier, now)
    raised = await _raise_incident(batch.conn, rules, facts, verdict, now)
    return Outcome(row, raised_alert=raised, fresh=True)


async def _features(batch: _Batch, facts: PaymentFacts) -> tuple[PaymentFeatures, list[Any], bool]:
    known, has_devices = False, False
    if facts.payer_user_id and facts.device_id:
        known, has_devices = batch.activity.device_history(facts.payer_user_id, facts.device_id)
    payer_hits = {
        (BlockKind.USER, facts.payer_user_id),
        (BlockKind.DEVICE, facts.device_id),
        (BlockKind.IP, facts.ip_address),
        (BlockKind.ACCOUNT, facts.payer_account_id),
    }
    blocked = frozenset(kind for kind, value in payer_hits if value and (kind.value, value) in batch.listed)
    earlier = await _earlier_just_under(batch, facts)
    features = PaymentFeatures(
        amount=facts.amount,
        tier=facts.tier,
        tallies=batch.activity.tallies(facts.subject_values, facts.amount.currency),
        new_device=is_new_device(known=known, user_has_devices=has_devices),
        blocked=blocked,
        payee_blocked=(BlockKind.ACCOUNT.value, facts.payee_account_id) in batch.listed,
        ip_country=facts.ip_country,
        home_country=facts.home_country,
        earlier_just_under=len(earlier),
    )
    return features, earlier, known


async def _earlier_just_under(batch: _Batch, facts: PaymentFacts) -> list[Any]:
    rule = batch.rules.aml.structuring
    if facts.synthetic or not facts.payer_user_id or not aml.is_just_under(facts.amount, rule):
        return []  # only a payment that is itself just under the threshold can complete the pattern
    low, high = aml.just_under_range(facts.amount.currency, rule) or (0, 0)
    await batch.flush()  # rare: the batch's earlier payments must be in the table this reads
    return await assessments.earlier_just_under(
        batch.conn, facts.payer_user_id, facts.amount.currency, low, high, window_start(batch.now, rule.window_seconds)
    )


async def _file_aml_reports(
    conn: AsyncConnection, rules: Rules, facts: PaymentFacts, verdict: Verdict, earlier: list[Any], now: datetime
) -> None:
    structuring_since = window_start(now, rules.aml.structuring.window_seconds)
    already = bool(earlier) and await aml_store.reported_since(
        conn, facts.payer_user_id, AmlKind.STRUCTURING.value, structuring_since
    )
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


async def _raise_incident(
    conn: AsyncConnection, rules: Rules, facts: PaymentFacts, verdict: Verdict, now: datetime
) -> bool:
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
        conn,
        outbox,
        event_type=ALERT_EVENT,
        aggregate_id=facts.payer_account_id,
        user_id=facts.payer_user_id,
        payload={
            "alert_id": alert_id,
            "level": verdict.warning_level.value,
            "user_id": facts.payer_user_id,
            "account_id": facts.payer_account_id,
            "payment_id": facts.payment_id,
            "reasons": reasons,
        },
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

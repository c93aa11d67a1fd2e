"""Assessing a newly registered user: the facts risk holds about their device and IP, and the resulting tier."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.platform.storage.idempotency import IdempotencyStore, KeyedCall, Reply
from finmesh.risk.domain.onboarding import OnboardingFacts, OnboardingVerdict, assess_onboarding
from finmesh.risk.domain.rules import Rules
from finmesh.risk.domain.values import BlockKind
from finmesh.risk.store import blocklist, subjects
from finmesh.risk.store import onboarding as store


class Onboarding:
    def __init__(self, answers: IdempotencyStore) -> None:
        self._answers = answers

    async def assess(
        self,
        call: KeyedCall[OnboardingVerdict, Reply],
        rules: Rules,
        *,
        user_id: str,
        age_years: int,
        user_kind: str,
        device_id: str,
        ip_address: str,
        ip_country: str,
    ) -> Reply:
        """AssessOnboarding: the user's tier under `rules`, recorded with the answer (a retry gets that tier)."""
        return await call.run(
            self._answers,
            lambda conn: assess_user(
                conn,
                rules,
                user_id=user_id,
                age_years=age_years,
                user_kind=user_kind,
                device_id=device_id,
                ip_address=ip_address,
                ip_country=ip_country,
                now=datetime.now(UTC),
            ),
        )


async def assess_user(
    conn: AsyncConnection,
    rules: Rules,
    *,
    user_id: str,
    age_years: int,
    user_kind: str,
    device_id: str,
    ip_address: str,
    ip_country: str,
    now: datetime,
) -> OnboardingVerdict:
    """Score the user, record the verdict and remember the device (in the caller's transaction)."""
    await subjects.lock(conn, f"user:{user_id}", now)
    others = await subjects.other_users_on_device(conn, device_id, user_id) if device_id else 0
    hits = await blocklist.hits(
        conn,
        [(BlockKind.USER.value, user_id), (BlockKind.DEVICE.value, device_id), (BlockKind.IP.value, ip_address)],
        now,
    )
    facts = OnboardingFacts(
        age_years=age_years,
        user_kind=user_kind,
        ip_country=ip_country,
        other_users_on_device=others,
        blocked=frozenset(BlockKind(k) for k, _ in hits),
    )
    verdict = assess_onboarding(facts, rules)
    await store.record(
        conn,
        assessment_id=str(uuid.uuid4()),
        user_id=user_id,
        tier=verdict.tier.value,
        score=verdict.score,
        reasons=[{"code": r.code, "score": r.score, "detail": r.detail} for r in verdict.reasons],
        rules_version=rules.version,
        created_at=now,
    )
    if device_id:
        # The registration device becomes the user's first known device: payments from it are not "new".
        await subjects.remember_device(conn, user_id, device_id, now)
    return verdict

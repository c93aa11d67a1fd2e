"""AssessOnboarding yields the user's tier, remembers the device, and is idempotent."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from finmesh.platform.rpc.guard import field_violations_of
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import key, payment, risk_node


def onboard(user: str, **fields) -> pb.AssessOnboardingRequest:
    base = {"idempotency_key": key(), "user_id": user, "age_years": 35, "user_kind": "personal"}
    return pb.AssessOnboardingRequest(**{**base, **fields})


async def test_tiers_follow_the_onboarding_rules(databases, tmp_path: Path) -> None:
    """An ordinary adult is LOW, a young user MEDIUM, a shared device and high-risk country HIGH."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        stub = risk.stub
        assert (await stub.AssessOnboarding(onboard("u-plain"))).tier == pb.RISK_TIER_LOW
        young = await stub.AssessOnboarding(onboard("u-young", age_years=19))
        assert (young.tier, [r.code for r in young.reasons]) == (pb.RISK_TIER_MEDIUM, ["ONBOARDING_YOUNG"])
        for i in range(3):
            await stub.AssessOnboarding(onboard(f"u-farm-{i}", device_id="farm-phone"))
        farmed = await stub.AssessOnboarding(onboard("u-farm-3", device_id="farm-phone", ip_country="ir"))
        assert farmed.tier == pb.RISK_TIER_HIGH
        assert [r.code for r in farmed.reasons] == ["ONBOARDING_SHARED_DEVICE", "ONBOARDING_HIGH_RISK_COUNTRY"]


async def test_onboarding_device_is_not_new_for_payments(databases, tmp_path: Path) -> None:
    """The registration device is the user's first known device; a different one is NEW_DEVICE."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        await risk.stub.AssessOnboarding(onboard("u-dev", device_id="reg-phone"))
        assert list((await risk.assess(payment("u-dev", device_id="reg-phone"))).reasons) == []
        assert [r.code for r in (await risk.assess(payment("u-dev", device_id="other"))).reasons] == ["NEW_DEVICE"]


async def test_onboarding_replays_and_validates(databases, tmp_path: Path) -> None:
    """The same key replays the first tier; bad fields are INVALID_ARGUMENT naming each."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        request = onboard("u-replay", age_years=20)
        first = await risk.stub.AssessOnboarding(request)
        assert await risk.stub.AssessOnboarding(request) == first
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await risk.stub.AssessOnboarding(
                onboard("", idempotency_key="", age_years=-1, user_kind="alien", ip_address="x")
            )
        assert sorted(field_violations_of(bad.value)) == [
            "age_years",
            "idempotency_key",
            "ip_address",
            "user_id",
            "user_kind",
        ]

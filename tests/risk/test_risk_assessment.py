"""AssessPayment through a real gRPC server: every feature, idempotency, and bad input."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from finmesh.platform.rpc.guard import field_violations_of
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import cny, key, payment, risk_node


def codes(assessment: pb.Assessment) -> set[str]:
    return {r.code for r in assessment.reasons}


async def test_small_payment_is_approved_low_with_rules_version(databases, tmp_path: Path) -> None:
    """The e2e slice's 123.45 CNY is approved at LOW with no reasons, under the packaged rules' version."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        a = await risk.assess(payment(minor=12_345))
        assert (a.decision, a.warning_level, a.score, list(a.reasons)) == (
            pb.DECISION_APPROVE,
            pb.WARNING_LEVEL_LOW,
            0,
            [],
        )
        assert a.rules_version == (await risk.stub.GetRules(pb.GetRulesRequest())).version != ""


async def test_same_payment_id_returns_the_recorded_assessment(databases, tmp_path: Path) -> None:
    """Asking again about one payment returns the first assessment and counts it once for velocity."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        request = payment(minor=5_000)
        first, second = await risk.assess(request), await risk.assess(request)
        assert first.SerializeToString() == second.SerializeToString()


async def test_features_each_name_their_reason(databases, tmp_path: Path) -> None:
    """Amount, velocity, new device, geography, tier and block lists each add a named reason."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        big = await risk.assess(payment(minor=6_000_000))
        assert codes(big) == {"AMOUNT_LARGE", "AML_LARGE_VALUE"} and big.decision == pb.DECISION_REVIEW

        user = "velocity-user"
        decisions = [(await risk.assess(payment(user, 1_000))).decision for _ in range(21)]
        assert decisions[:20] == [pb.DECISION_APPROVE] * 20
        assert decisions[20] == pb.DECISION_REVIEW

        await risk.assess(payment("device-user", device_id="phone-1"))
        newdev = await risk.assess(payment("device-user", device_id="laptop-9"))
        assert codes(newdev) == {"NEW_DEVICE"} and newdev.score == 15
        known = await risk.assess(payment("device-user", device_id="phone-1"))
        assert codes(known) == set()

        geo = await risk.assess(payment(ip_country="us", home_country="CN", ip_address="203.0.113.7"))
        assert codes(geo) == {"GEO_MISMATCH"}
        hot = await risk.assess(payment(ip_country="KP", home_country="KP"))
        assert codes(hot) == {"GEO_HIGH_RISK_COUNTRY"} and hot.decision == pb.DECISION_REVIEW

        tiered = await risk.assess(payment(payer_tier=pb.RISK_TIER_HIGH))
        assert codes(tiered) == {"TIER_HIGH"} and tiered.score == 25

        await risk.stub.AddBlockListEntry(
            pb.AddBlockListEntryRequest(
                idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_ACCOUNT, value="mule-account", reason="reported mule"
            )
        )
        to_mule = await risk.assess(payment(payee_account_id="mule-account"))
        assert codes(to_mule) == {"BLOCK_LISTED_PAYEE"}
        assert (to_mule.decision, to_mule.warning_level) == (pb.DECISION_DECLINE, pb.WARNING_LEVEL_HIGH)


async def test_ip_velocity_counts_one_address_in_any_spelling(databases, tmp_path: Path) -> None:
    """IPv4 and its IPv4-mapped IPv6 form count as one address for IP velocity."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        for i in range(100):
            ip = "198.51.100.4" if i % 2 else "::ffff:198.51.100.4"
            assert (await risk.assess(payment(ip_address=ip))).decision == pb.DECISION_APPROVE
        tripped = await risk.assess(payment(ip_address="198.51.100.4"))
        assert codes(tripped) == {"VELOCITY_IP_COUNT"}


@pytest.mark.parametrize(
    ("fields", "violations"),
    [
        ({"payment_id": ""}, ["payment_id"]),
        ({"amount": cny(0)}, ["amount.minor_units"]),
        (
            {"amount": pb.AssessPaymentRequest().amount.__class__(currency_code="XXX", minor_units=1)},
            ["amount.currency_code"],
        ),
        ({"ip_address": "not-an-ip", "ip_country": "C1", "payer_tier": 9}, ["ip_address", "ip_country", "payer_tier"]),
        ({"payer_account_id": "", "ip_address": "1.2.3"}, ["payer_account_id", "ip_address"]),
        # Past the contract's bounds: the guard names each field before the handler looks.
        ({"ip_country": "CHN", "device_id": "d" * 65}, ["ip_country", "device_id"]),
    ],
)
async def test_bad_requests_name_every_bad_field(databases, tmp_path: Path, fields, violations) -> None:
    """Malformed requests are INVALID_ARGUMENT with one field violation per bad field, never INTERNAL."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await risk.assess(payment(**fields))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(field_violations_of(refused.value)) == sorted(violations)

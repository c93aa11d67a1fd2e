"""Two risk processes on one database see each other's velocity counts (state is shared, not per process)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc
from tests.auth import SERVICE_SECRET, Issuer
from tests.auth import channel as acting_channel
from tests.risk.harness import payment, risk_node, rules_yaml, write_atomically

# Three payments per user per minute; the fourth trips the rule, whichever replica sees it.
TIGHT_VELOCITY = [
    {"code": "VELOCITY_USER_COUNT", "subject": "user", "window_seconds": 60, "max_count": 3, "score": 50},
    {
        "code": "VELOCITY_DEVICE_AMOUNT",
        "subject": "device",
        "window_seconds": 60,
        "max_amount": {"CNY": 250_000},
        "score": 50,
    },
]


@contextmanager
def risk_process(url: str, rules_file: Path, data_dir: Path, issuer: Issuer) -> Iterator[str]:
    """`finmesh.risk.main` as a child process (auth enforced, keys from `issuer`); yields its target once it
    reports its port."""
    env = {
        **os.environ,
        "FINMESH_AUTH_MODE": "enforce",
        "FINMESH_IDENTITY_TARGET": issuer.target,
        "FINMESH_SERVICE_SECRET": SERVICE_SECRET,
        "FINMESH_DATABASE_URL": url,
        "FINMESH_RISK_RULES_FILE": str(rules_file),
        "FINMESH_PORT": "0",
        "FINMESH_DATA_DIR": str(data_dir),
        "FINMESH_TRACING_ENABLED": "false",
        "FINMESH_SHUTDOWN_GRACE_SECONDS": "0.5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "finmesh.risk.main"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "risk process exited before reporting its port"
        yield f"127.0.0.1:{json.loads(line)['port']}"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


async def test_two_risk_processes_share_velocity(databases, tmp_path: Path) -> None:
    """Payments split across an in-process replica and a separate process add up in one velocity count."""
    url = await databases.new("risk")
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("shared-1", velocity=TIGHT_VELOCITY))
    async with risk_node(url, tmp_path, risk_rules_file=str(rules_file)) as local:
        with risk_process(url, rules_file, tmp_path / "child", local.issuer) as target:
            async with acting_channel(target, local.issuer) as channel:
                remote = pb_grpc.RiskServiceStub(channel)

                async def remote_assess(request: pb.AssessPaymentRequest) -> pb.Assessment:
                    return (await remote.AssessPayment(request, timeout=10)).assessment

                # User velocity: two here, one there, and the fourth trips on either side.
                user = "shared-user"
                assert (await local.assess(payment(user, 1_000))).decision == pb.DECISION_APPROVE
                assert (await remote_assess(payment(user, 1_000))).decision == pb.DECISION_APPROVE
                assert (await local.assess(payment(user, 1_000))).decision == pb.DECISION_APPROVE
                tripped = await remote_assess(payment(user, 1_000))
                assert [r.code for r in tripped.reasons] == ["VELOCITY_USER_COUNT"]
                assert tripped.rules_version == "shared-1"
                again = await local.assess(payment(user, 1_000))
                assert [r.code for r in again.reasons] == ["VELOCITY_USER_COUNT"]

                # Device amount across users and replicas: 1000 + 1000 CNY fit, 500 more does not.
                assert not (await remote_assess(payment(minor=100_000, device_id="kiosk"))).reasons
                assert not (await local.assess(payment(minor=100_000, device_id="kiosk"))).reasons
                over = await remote_assess(payment(minor=50_001, device_id="kiosk"))
                assert [r.code for r in over.reasons] == ["VELOCITY_DEVICE_AMOUNT"]


async def test_concurrent_replicas_never_both_approve_past_the_limit(databases, tmp_path: Path) -> None:
    """Ten simultaneous payments by one user over two replicas: exactly three approved (the per-payer lock)."""
    url = await databases.new("risk")
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("shared-2", velocity=TIGHT_VELOCITY))
    async with (
        risk_node(url, tmp_path, risk_rules_file=str(rules_file)) as a,
        risk_node(url, tmp_path, risk_rules_file=str(rules_file)) as b,
    ):
        results = await asyncio.gather(*((a if i % 2 else b).assess(payment("racer", 1_000)) for i in range(10)))
        assert sorted(r.decision for r in results) == [pb.DECISION_APPROVE] * 3 + [pb.DECISION_REVIEW] * 7

"""finmesh called from Node.js: clients/node/contract_test.mjs against real payments, risk and notify servers.

The servers run in this process on ephemeral ports (tests.inprocess, auth enforced against the test issuer);
node runs as a child process with the target and two customers' tokens in its environment. The script loads
protos/ alone with @grpc/proto-loader and decodes refusals with the Protobuf-ES code buf.gen.ts.yaml generates,
so this is also the proof that protos/ is self-contained and that the TypeScript template works.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import Databases
from tests.inprocess import running_mesh

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "node"
NODE_TIMEOUT = 60


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the Node contract test must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    """node, with clients/node's pinned packages installed and the contracts generated (tools/node_client.sh)."""
    found = shutil.which("node")
    if found is None:
        _unavailable("node is not installed (Node.js 20 or newer, with npm)")
    ready = subprocess.run(
        [str(REPO / "tools" / "node_client.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    if ready.returncode != 0:
        _unavailable(f"tools/node_client.sh failed: {ready.stderr.strip()[-800:]}")
    return found


async def _run_contract_test(node: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        node,
        str(CLIENT / "contract_test.mjs"),
        cwd=CLIENT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_node_client_calls_health_pays_and_decodes_every_refusal(node: str, tmp_path: Path) -> None:
    """Health, UNAUTHENTICATED with TOKEN_MISSING, wallets/top-up/payment with idempotency keys, a validation
    error's BadRequest and INSUFFICIENT_FUNDS, each reason mapped to its ErrorReason value, all from Node."""
    databases = Databases("sqlite", tmp_path)  # one database kind suffices: the subject is the wire contract
    async with running_mesh(databases, tmp_path) as mesh:
        alice, bob = uuid.uuid4().hex, uuid.uuid4().hex
        env = {
            "FINMESH_PAYMENTS_TARGET": mesh.services["payments"].target,
            "FINMESH_ALICE_ID": alice,
            "FINMESH_ALICE_TOKEN": mesh.issuer.customer(alice),
            "FINMESH_BOB_ID": bob,
            "FINMESH_BOB_TOKEN": mesh.issuer.customer(bob),
        }
        code, out, err = await _run_contract_test(node, env)

    assert code == 0, f"contract_test.mjs failed:\n{err[-3000:]}"
    seen: dict[str, Any] = json.loads(out)
    assert seen["health"] == {"server": "SERVING", "payments": "SERVING"}
    assert seen["unauthenticated"] == {
        "code": "UNAUTHENTICATED",
        "reason": "TOKEN_MISSING",
        "reason_enum": "ERROR_REASON_TOKEN_MISSING",
        "reason_number": 50,
        "violations": [],
    }
    assert seen["payment"] == {
        "status": "PAYMENT_STATUS_CAPTURED",
        "amount": "2500",
        "replayed_same_payment": True,
        "alice_available": "7500",
        "bob_available": "2500",
    }
    assert seen["validation"] == {
        "code": "INVALID_ARGUMENT",
        "reason": "VALIDATION_FAILED",
        "reason_enum": "ERROR_REASON_VALIDATION_FAILED",
        "reason_number": 1,
        "violations": ["amount.minor_units"],
    }
    assert seen["refusal"] == {
        "code": "FAILED_PRECONDITION",
        "reason": "INSUFFICIENT_FUNDS",
        "reason_enum": "ERROR_REASON_INSUFFICIENT_FUNDS",
        "reason_number": 10,
        "violations": [],
    }

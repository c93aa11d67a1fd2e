"""`--target local`: the four services as processes on loopback (as `finmesh up` runs them), a test owner, and
funded test accounts, all made for this run and removed after it.

The test owner is a user onboarded the way the demo onboards one (registration, SMS code from the fake
provider, real-name check, password + SMS login), so its token is one identity really signed. Payments learns
who the test owner is from FINMESH_SYNTHETIC_OWNER_IDS at start, and the owner's id exists only after the
registration: so payments is restarted once with it, before any test account is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc

from finmesh.cli.mesh import Mesh
from finmesh.cli.slice import Handset, new_people, onboard
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.load.accounts import provision
from finmesh.load.target import Endpoint, Targets
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc

START_TIMEOUT_S = 90.0
TEST_ACCOUNTS = 8
# A load run makes far more payments than a customer may in a day, and all from one caller whose per-caller
# rate limit would otherwise be the figure measured; lifted on this throwaway mesh only.
_LIMITS = {
    tier: {"CNY": {"single": 10**12, "daily_amount": 10**15, "daily_count": 10**9}}
    for tier in ("low", "medium", "high")
}
_ENV = {
    "FINMESH_TIER_LIMITS": json.dumps(_LIMITS),
    "FINMESH_IDENTITY_ACCESS_TOKEN_TTL_SECONDS": "3600",
    "FINMESH_RATE_LIMIT_PER_CALLER_RPS": "0",
}


async def _onboard_owner(mesh: Mesh) -> tuple[str, str]:
    """Onboard a synthetic person; returns (user id, access token)."""
    person = new_people()[0]
    async with (
        grpc.aio.insecure_channel(mesh.targets()["identity"]) as channel,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        return await onboard(
            id_grpc.IdentityServiceStub(channel),
            Handset(mesh.fakes["sms"], http),
            person,
            f"load owner {uuid.uuid4().hex}",
            f"load-{uuid.uuid4().hex[:8]}",
            0,
            wait_seconds=20,
        )


def _restart_payments(mesh: Mesh, owner_id: str) -> None:
    proc = mesh.processes["payments"]
    proc.process.send_signal(signal.SIGTERM)
    try:
        proc.process.wait(30)
    except subprocess.TimeoutExpired:
        proc.process.kill()
        proc.process.wait()
    mesh.extra_env["FINMESH_SYNTHETIC_OWNER_IDS"] = json.dumps([owner_id])
    targets = {f"FINMESH_{name.upper()}_TARGET": target for name, target in mesh.targets().items()}
    mesh.start_one("payments", proc.port, targets)
    mesh.wait_ready(START_TIMEOUT_S)


@contextlib.asynccontextmanager
async def local_targets(*, data_dir: Path | None = None, quiet: bool = False) -> AsyncIterator[Targets]:
    """The mesh keeps its databases, spans and logs in `data_dir` (kept), else in a temporary directory."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finmesh-load-")))
        mesh = Mesh(data_dir, extra_env=dict(_ENV))
        if not quiet:
            print(f"starting a local mesh in {data_dir} ...", file=sys.stderr, flush=True)
        try:
            await asyncio.to_thread(mesh.start, START_TIMEOUT_S)
            owner_id, token = await _onboard_owner(mesh)
            await asyncio.to_thread(_restart_payments, mesh, owner_id)
            payments = Endpoint(mesh.targets()["payments"], token=token)
            async with grpc.aio.insecure_channel(payments.target) as channel:
                accounts = await provision(
                    pay_grpc.PaymentsServiceStub(channel), owner_id, payments.metadata(), count=TEST_ACCOUNTS
                )
            note = f"test owner {owner_id}: {len(accounts.accounts)} funded test accounts"
            yield Targets(
                "local",
                payments,
                Endpoint(mesh.targets()["identity"], token=token),
                accounts,
                notes=[] if quiet else [note],
            )
        finally:
            await asyncio.to_thread(mesh.stop)

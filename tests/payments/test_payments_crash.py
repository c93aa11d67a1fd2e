"""Killed payments processes (SIGKILL, real subprocesses): a committed answer survives and is replayed byte for byte."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import grpc
import pytest

from finmesh.cli.mesh import Mesh, ServiceProcess, free_port
from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.auth import SERVICE_SECRET
from tests.auth import channel as acting_channel
from tests.inprocess import running_mesh
from tests.payments.harness import Client, Database, key, refusal


async def _start_payments(mesh: Mesh, risk_target: str) -> ServiceProcess:
    mesh.log_dir.mkdir(parents=True, exist_ok=True)
    mesh.span_dir.mkdir(parents=True, exist_ok=True)
    process = mesh.start_one(
        "payments", free_port(), {"FINMESH_RISK_TARGET": risk_target, "FINMESH_NOTIFY_TARGET": "127.0.0.1:1"}
    )
    await asyncio.to_thread(mesh.wait_ready, 60)
    return process


def _kill(process: ServiceProcess) -> int:
    process.process.send_signal(signal.SIGKILL)
    return process.process.wait(30)


@pytest.fixture
async def risk_and_payments(databases, tmp_path: Path):
    """Risk in-process; payments as a child process on its own database (the test restarts it)."""
    async with running_mesh(databases, tmp_path, names=("risk",)) as inprocess:
        url = await databases.new("payments")
        mesh = Mesh(tmp_path / "mesh", database_urls={"payments": url})
        # The child verifies tokens with the in-process issuer's keys and gets its service token there.
        mesh.extra_env.update(
            {
                "FINMESH_AUTH_MODE": "enforce",
                "FINMESH_IDENTITY_TARGET": inprocess.issuer.target,
                "FINMESH_SERVICE_SECRET": SERVICE_SECRET,
            }
        )
        yield mesh, inprocess.services["risk"].target, url, inprocess
        for proc in mesh.processes.values():
            if proc.process.poll() is None:
                _kill(proc)


async def test_replay_after_sigkill_and_restart(risk_and_payments) -> None:
    """Pay, SIGKILL the process, start it again: the same key returns the identical bytes and moves money once."""
    mesh, risk_target, _, inprocess = risk_and_payments
    first_process = await _start_payments(mesh, risk_target)
    async with acting_channel(first_process.target, inprocess.issuer, inprocess.book) as channel:
        c = Client(channel)
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 10_000)
        idem = key()
        first = await c.pay(alice, bob, 4_321, idem=idem)
    assert _kill(first_process) == -signal.SIGKILL

    second_process = await _start_payments(mesh, risk_target)
    async with acting_channel(second_process.target, inprocess.issuer, inprocess.book) as channel:
        c = Client(channel)
        again = await c.pay(alice, bob, 4_321, idem=idem)
        assert again.SerializeToString() == first.SerializeToString()
        assert await c.triple(alice) == (10_000 - 4_321, 0, 10_000 - 4_321)
        assert (await c.verify_audit()).intact


async def test_killed_between_commit_and_reply(risk_and_payments) -> None:
    """The process dies right after committing (failpoint): the caller saw no answer; its retry gets the stored one."""
    mesh, risk_target, url, inprocess = risk_and_payments
    mesh.extra_env["FINMESH_FAILPOINT_KILL_AFTER_COMMIT"] = json.dumps(["CreatePayment"])
    doomed = await _start_payments(mesh, risk_target)
    idem = key()
    async with acting_channel(doomed.target, inprocess.issuer, inprocess.book) as channel:
        c = Client(channel)
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 10_000)
        lost = await refusal(c.pay(alice, bob, 2_500, idem=idem))
        assert lost.code == grpc.StatusCode.UNAVAILABLE  # the connection died with the process
    assert doomed.process.wait(30) == -signal.SIGKILL

    del mesh.extra_env["FINMESH_FAILPOINT_KILL_AFTER_COMMIT"]
    restarted = await _start_payments(mesh, risk_target)
    async with acting_channel(restarted.target, inprocess.issuer, inprocess.book) as channel:
        c = Client(channel)
        retried = await c.pay(alice, bob, 2_500, idem=idem)
        assert (await c.pay(alice, bob, 2_500, idem=idem)).SerializeToString() == retried.SerializeToString()
        assert await c.triple(alice) == (7_500, 0, 7_500)
        assert await c.triple(bob) == (2_500, 0, 2_500)
    db = Database(url)
    try:
        stored = await db.scalar(
            "SELECT response FROM scoped_idempotency_keys WHERE method = 'CreatePayment' AND key = :k", k=idem
        )
        assert pb.CreatePaymentResponse.FromString(stored).payment.SerializeToString() == retried.SerializeToString()
        assert await db.totals() == {"CNY": 0}
    finally:
        await db.close()

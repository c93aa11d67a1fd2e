"""The canary drill's parts on their own: the weighted Service stand-in, the bad build's faults, the share
arithmetic and the local backend's record and pod arithmetic."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from finmesh.drill.faulty import Faults, faulty, parse
from finmesh.drill.forwarder import NO_ENDPOINT, Forwarder
from finmesh.drill.local_backend import LocalBackend
from finmesh.drill.share import Reading, calls_served, settle_time, share_between, share_series
from finmesh.rollout.model import Conflict


def test_forwarder_picks_endpoints_in_proportion_to_their_weights() -> None:
    """A color with k pods gets k shares of new connections; weight 0 gets none; switch() is blue-green."""
    forwarder = Forwarder("127.0.0.1:1", rng=random.Random(1))
    assert {forwarder.pick() for _ in range(50)} == {"127.0.0.1:1"}
    forwarder.set_weights({"blue:1": 18, "green:2": 2, "old:3": 0})
    picks = Counter(forwarder.pick() for _ in range(20_000))
    assert set(picks) == {"blue:1", "green:2"}
    assert abs(picks["green:2"] / 20_000 - 0.10) < 0.01, picks
    forwarder.switch("green:2")
    assert forwarder.endpoints == {"green:2": 1} and forwarder.active == "green:2"
    forwarder.set_weights({})
    assert forwarder.pick() == NO_ENDPOINT
    with pytest.raises(ValueError, match="negative"):
        forwarder.set_weights({"blue:1": -1})


async def test_forwarder_counts_connections_per_endpoint_and_refuses_without_one() -> None:
    """Each connection goes to the endpoint picked when it is accepted and is counted there; with no endpoint
    the client's connection is closed (gRPC UNAVAILABLE) and counted as refused."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(echo, "127.0.0.1", 0) for _ in range(2)]
    targets = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    forwarder = Forwarder(rng=random.Random(3))
    forwarder.set_weights({targets[0]: 1, targets[1]: 3})
    await forwarder.start()
    try:
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
            writer.write(b"ping")
            assert await reader.read(100) == b"ping"
            writer.close()
        assert sum(forwarder.accepted.values()) == 40 and set(forwarder.accepted) == set(targets)
        assert forwarder.accepted[targets[1]] > forwarder.accepted[targets[0]]
        forwarder.set_weights({})
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
        assert await reader.read(100) == b""
        writer.close()
        assert forwarder.refused[NO_ENDPOINT] == 1
    finally:
        await forwarder.close()
        for server in servers:
            server.close()


class _Context:
    """The part of grpc.aio.ServicerContext a faulty call uses: abort raises, like grpc's own."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise grpc.aio.AbortError()


async def test_faulty_build_fails_a_share_of_calls_before_the_handler_runs() -> None:
    """About fail_share of the calls abort with the chosen code, and for those the handler never runs."""
    ran: list[int] = []

    async def handler(request: int, context: Any) -> int:
        ran.append(request)
        return request

    method = faulty(handler, "svc/Method", Faults(fail_share=0.3), random.Random(5))
    failed = []
    for i in range(2000):
        context = _Context()
        try:
            assert await method(i, context) == i  # type: ignore[arg-type]  # the part of a context it uses
        except grpc.aio.AbortError:
            assert context.code is grpc.StatusCode.INTERNAL
            failed.append(i)
    assert abs(len(failed) / 2000 - 0.3) < 0.04
    assert set(ran).isdisjoint(failed) and len(ran) + len(failed) == 2000


def test_faulty_options_are_checked_and_round_trip() -> None:
    faults = Faults(fail_share=0.3, code="UNAVAILABLE", delay_share=0.5, delay_seconds=0.2, methods=frozenset({"A"}))
    assert parse(["payments", *faults.argv()]) == ("payments", faults, None)
    with pytest.raises(ValueError, match="fail_share"):
        Faults(fail_share=1.5)
    with pytest.raises(SystemExit):
        parse(["payments", "--fail-code", "OK"])


def test_share_arithmetic() -> None:
    """Share between readings is the color's calls over all calls in between; settling needs every later
    point inside the tolerance."""
    exposition = (
        "# TYPE rpc_server_call_duration_seconds histogram\n"
        'rpc_server_call_duration_seconds_count{service_name="payments",rpc_service="finmesh.payments.v1.X"} 7\n'
        'rpc_server_call_duration_seconds_count{service_name="payments",rpc_service="grpc.health.v1.Health"} 5\n'
        'rpc_server_call_duration_seconds_count{service_name="risk",rpc_service="finmesh.risk.v1.X"} 3\n'
    )
    assert calls_served(exposition, "payments") == 7
    readings = [Reading(float(t), {"blue": 10 * t, "green": t * t}) for t in range(10)]
    assert share_between(readings[0], readings[2], "green") == pytest.approx(4 / 24)
    assert share_between(readings[1], readings[1], "green") is None
    series = share_series(readings, "green", 2.0, 0.0, 9.0)
    assert [t for t, _ in series] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert settle_time([(1.0, 0.3), (2.0, 0.12), (3.0, 0.2), (4.0, 0.11), (5.0, 0.09)], 0.0, 0.1, 0.05) == 4.0
    assert settle_time([(1.0, 0.1), (2.0, 0.3)], 0.0, 0.1, 0.05) is None


async def test_local_backend_record_revisions_and_canary_pods(tmp_path: Path) -> None:
    """The record is saved only at the revision it was read at (else Conflict); a canary weight becomes whole
    pods, at least one, and leaves at least one stable pod; the blocking methods refuse the loop's thread."""
    backend = LocalBackend(tmp_path / "state", tmp_path / "logs", pods=20)
    assert backend.load("payments") == (None, "")
    first = await asyncio.to_thread(backend.save, "payments", {"phase": "Progressing"}, "")
    assert backend.load("payments") == ({"phase": "Progressing"}, first)
    second = backend.save("payments", {"phase": "Paused"}, first)
    with pytest.raises(Conflict, match="revision"):
        backend.save("payments", {"phase": "Degraded"}, first)
    assert backend.load("payments") == ({"phase": "Paused"}, second)
    assert [backend.canary_pods(w) for w in (0, 1, 10, 25, 50, 99, 100)] == [0, 1, 2, 5, 10, 19, 20]
    with pytest.raises(RuntimeError, match="worker thread"):
        backend.deploy("payments", "green", "2", 1)

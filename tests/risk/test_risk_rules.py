"""Rules: reloaded from the watched file under load, updated over gRPC, refused when broken."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from finmesh.platform.rpc.guard import field_violations_of, reason_of
from finmesh.risk.domain.rules import RulesError
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import key, payment, risk_node, rules_yaml, wait_until, write_atomically

REVIEW_FROM_1000_CNY = [{"code": "AMOUNT_LARGE", "score": 40, "at_least": {"CNY": 100_000}}]


async def test_file_reload_under_load_changes_decisions_without_a_failed_call(databases, tmp_path: Path) -> None:
    """Rewriting the file under steady load switches decisions to the new version; no call fails.

    A broken file written afterwards is refused and reported over GetRules,
    and the previous rules keep deciding.
    """
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("load-1"))
    async with risk_node(await databases.new("risk"), tmp_path, risk_rules_file=str(rules_file)) as risk:
        results: list[tuple[str, int]] = []
        after_switch: list[str] = []  # versions of calls that started once the replica reported load-2
        failures: list[BaseException] = []
        stop = asyncio.Event()
        switched = False

        async def worker() -> None:
            while not stop.is_set():
                started_after_switch = switched
                try:
                    a = await risk.assess(payment(minor=100_000))
                except grpc.aio.AioRpcError as error:
                    failures.append(error)
                    continue
                results.append((a.rules_version, a.decision))
                if started_after_switch:
                    after_switch.append(a.rules_version)

        workers = [asyncio.create_task(worker()) for _ in range(4)]
        try:
            await wait_until(lambda: len(results) >= 20)
            write_atomically(rules_file, rules_yaml("load-2", amount=REVIEW_FROM_1000_CNY))
            await wait_until(lambda: _version(risk, "load-2"))
            switched = True
            seen = len(results)
            await wait_until(lambda: len(results) >= seen + 20)

            write_atomically(rules_file, "version: load-3\ndecision: [review_score: 1\n")
            status = None

            async def refused() -> bool:
                nonlocal status
                status = await risk.stub.GetRules(pb.GetRulesRequest())
                return bool(status.rules_file_error)

            await wait_until(refused)
            seen = len(results)
            await wait_until(lambda: len(results) >= seen + 20)
        finally:
            stop.set()
            await asyncio.gather(*workers)

    assert failures == []
    assert set(results) == {("load-1", pb.DECISION_APPROVE), ("load-2", pb.DECISION_REVIEW)}
    assert len(after_switch) >= 40 and set(after_switch) == {"load-2"}
    assert status is not None and status.version == "load-2"
    assert "not valid YAML" in status.rules_file_error and "line" in status.rules_file_error


async def test_invalid_file_names_the_bad_field_and_a_fix_clears_it(databases, tmp_path: Path) -> None:
    """A well-formed but invalid file is refused with the field's path; a corrected file activates."""
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("f-1"))
    async with risk_node(await databases.new("risk"), tmp_path, risk_rules_file=str(rules_file)) as risk:
        write_atomically(rules_file, rules_yaml("f-2", decision={"review_score": 90, "decline_score": 80}))
        await wait_until(lambda: _file_error(risk))
        status = await risk.stub.GetRules(pb.GetRulesRequest())
        assert status.version == "f-1"
        assert "file.decision: review_score must not exceed decline_score" in status.rules_file_error
        write_atomically(rules_file, rules_yaml("f-3"))
        await wait_until(lambda: _version(risk, "f-3"))
        assert (await risk.stub.GetRules(pb.GetRulesRequest())).rules_file_error == ""


async def _file_error(risk) -> bool:
    return bool((await risk.stub.GetRules(pb.GetRulesRequest())).rules_file_error)


async def _version(risk, version: str) -> bool:
    return (await risk.stub.GetRules(pb.GetRulesRequest())).version == version


async def test_update_rules_reaches_every_replica_and_survives_restart(databases, tmp_path: Path) -> None:
    """UpdateRules on one replica is active on the other; a restart keeps it (the file is not re-applied)."""
    url = await databases.new("risk")
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("file-1"))
    async with (
        risk_node(url, tmp_path, risk_rules_file=str(rules_file)) as a,
        risk_node(url, tmp_path, risk_rules_file=str(rules_file)) as b,
    ):
        source = rules_yaml("rpc-1", amount=REVIEW_FROM_1000_CNY)
        idem = key()
        reply = await a.stub.UpdateRules(pb.UpdateRulesRequest(idempotency_key=idem, source=source))
        assert reply.version == "rpc-1"
        again = await a.stub.UpdateRules(pb.UpdateRulesRequest(idempotency_key=idem, source=source))
        assert again == reply
        await wait_until(lambda: _version(b, "rpc-1"))
        decided = await b.assess(payment(minor=100_000))
        assert (decided.rules_version, decided.decision) == ("rpc-1", pb.DECISION_REVIEW)
    async with risk_node(url, tmp_path, risk_rules_file=str(rules_file)) as restarted:
        assert (await restarted.stub.GetRules(pb.GetRulesRequest())).version == "rpc-1"


async def test_update_rules_refuses_bad_sources(databases, tmp_path: Path) -> None:
    """Broken rules are INVALID_ARGUMENT naming each field; a reused version with new content is refused."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        active = (await risk.stub.GetRules(pb.GetRulesRequest())).version
        bad = rules_yaml(
            "bad-1", velocity=[{"code": "V1", "subject": "planet", "window_seconds": 0, "max_count": 3, "score": 10}]
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await risk.stub.UpdateRules(pb.UpdateRulesRequest(idempotency_key=key(), source=bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(field_violations_of(refused.value)) == [
            "source.velocity[0].code",
            "source.velocity[0].subject",
            "source.velocity[0].window_seconds",
        ]

        money_as_float = rules_yaml(
            "bad-2", amount=[{"code": "AMOUNT_LARGE", "score": 40, "at_least": {"CNY": 50000.00}}]
        )
        with pytest.raises(grpc.aio.AioRpcError) as floats:
            await risk.stub.UpdateRules(pb.UpdateRulesRequest(idempotency_key=key(), source=money_as_float))
        assert field_violations_of(floats.value) == ["source.amount[0].at_least.CNY"]

        await risk.stub.UpdateRules(pb.UpdateRulesRequest(idempotency_key=key(), source=rules_yaml("v-9")))
        with pytest.raises(grpc.aio.AioRpcError) as conflict:
            await risk.stub.UpdateRules(
                pb.UpdateRulesRequest(idempotency_key=key(), source=rules_yaml("v-9", amount=REVIEW_FROM_1000_CNY))
            )
        assert conflict.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(conflict.value) == "RULES_VERSION_CONFLICT"
        assert (await risk.stub.GetRules(pb.GetRulesRequest())).version == "v-9" != active

        with pytest.raises(grpc.aio.AioRpcError) as no_key:
            await risk.stub.UpdateRules(pb.UpdateRulesRequest(source=rules_yaml("v-10")))
        assert field_violations_of(no_key.value) == ["idempotency_key"]


async def test_broken_file_on_an_empty_database_stops_startup(databases, tmp_path: Path) -> None:
    """With no rules ever active there is nothing to fall back to: the process refuses to start."""
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, "version: x\n")
    with pytest.raises(RulesError, match="no rules were ever active"):
        async with risk_node(await databases.new("risk"), tmp_path, risk_rules_file=str(rules_file)):
            pass

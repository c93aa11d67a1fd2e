"""`finmesh load` end to end: against a recording server (the synthetic mark and token arrive, counts and the
report add up), against nothing (UNAVAILABLE counted, clean exit), and against real payments (money moves only
between the dedicated test accounts)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import grpc

from finmesh.cli.main import main
from finmesh.cli.mesh import free_port
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.load.accounts import TestAccounts, provision
from finmesh.load.run import Plan, run_load
from finmesh.load.target import Endpoint
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from tests.payments.harness import payments_mesh
from tests.pki import issue, write_pair

TOKEN_ENV = "FINMESH_LOAD_TEST_TOKEN"


class Recorder(pay_grpc.PaymentsServiceServicer, id_grpc.IdentityServiceServicer):
    """Answers the harness's RPCs at once and records each call's metadata and request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], Any]] = []

    def _record(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.calls.append((method, {k: v for k, v in context.invocation_metadata()}, request))

    async def CreatePayment(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._record("CreatePayment", request, context)
        return pay_pb.CreatePaymentResponse(
            payment=pay_pb.Payment(payment_id=uuid.uuid4().hex, status=pay_pb.PAYMENT_STATUS_CAPTURED)
        )

    async def GetAccount(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._record("GetAccount", request, context)
        return pay_pb.GetAccountResponse(account=pay_pb.Account(account_id=request.account_id))

    async def RegisterUser(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._record("RegisterUser", request, context)
        return id_pb.RegisterUserResponse()


async def _recording_server(credentials: grpc.ServerCredentials | None = None) -> tuple[Recorder, Any, int]:
    recorder = Recorder()
    server = grpc.aio.server()
    pay_grpc.add_PaymentsServiceServicer_to_server(recorder, server)
    id_grpc.add_IdentityServiceServicer_to_server(recorder, server)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    return recorder, server, port


def _accounts_file(tmp_path: Path, accounts: tuple[str, ...] = ("test-a", "test-b", "test-c")) -> Path:
    path = tmp_path / "accounts.json"
    TestAccounts("load-owner", accounts).save(path)
    return path


def _cli(*argv: str) -> int:
    return main(["load", "--quiet", *argv])


async def test_calls_carry_the_synthetic_mark_and_the_report_adds_up(tmp_path: Path, monkeypatch, capsys) -> None:
    """A mix against a server that records what arrives, then the payment path against the no-op baseline."""
    recorder, server, port = await _recording_server()
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_ENV, token)
    out = tmp_path / "out"
    try:
        code = await asyncio.to_thread(
            _cli,
            "--target",
            f"127.0.0.1:{port}",
            "--scenario",
            "mix",
            "--mix",
            "payment=2,balance=1,registration=1",
            "--mode",
            "open",
            "--rate",
            "40",
            "--count",
            "80",
            "--warmup",
            "0.5",
            "--token-env",
            TOKEN_ENV,
            "--accounts-file",
            str(_accounts_file(tmp_path)),
            "--out",
            str(out),
            "--baseline",
        )
    finally:
        await server.stop(0)
    assert code == 0
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err  # the token is never printed

    assert len(recorder.calls) == 80 + 20  # measured calls and the half second of warm-up
    for method, metadata, _ in recorder.calls:
        assert metadata.get("baggage") == "synthetic=true", (method, metadata)
        assert metadata.get("authorization") == f"Bearer {token}", method
    by_method = {
        m: [r for mm, _, r in recorder.calls if mm == m] for m in ("CreatePayment", "GetAccount", "RegisterUser")
    }
    assert [len(v) for v in by_method.values()] == [50, 25, 25]
    test_accounts = {"test-a", "test-b", "test-c"}
    for payment in by_method["CreatePayment"]:
        assert {payment.payer_account_id, payment.payee_account_id} <= test_accounts
        assert payment.payer_account_id != payment.payee_account_id and 0 < payment.amount.minor_units < 10
    assert len({p.payer_account_id for p in by_method["CreatePayment"]}) == 3  # payers spread over the ring
    assert len({p.idempotency_key for p in by_method["CreatePayment"]}) == 50  # a fresh key per call
    people = by_method["RegisterUser"]
    assert len({p.id_number for p in people}) == len({p.phone for p in people}) == len(people)
    assert all(p.email.endswith("@example.com") for p in people)

    doc = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert doc["run"]["scenario"] == "mix" and doc["run"]["mode"] == "open" and doc["run"]["rate"] == 40
    assert (doc["calls"], doc["ok"], doc["error_count"], doc["warmup_calls"]) == (80, 80, 0, 20)
    assert sum(row["ok"] for row in doc["timeline"]) == doc["ok"]
    assert {name: part["calls"] for name, part in doc["by_label"].items()} == {
        "payment": 40,
        "balance": 20,
        "registration": 20,
    }
    assert doc["throughput"] > 0 and 0 < doc["latency_ms"]["p50"] <= doc["latency_ms"]["max"]
    # The no-op baseline ran the payment path the same way, in the same run, and every ratio is there.
    assert (doc["baseline"]["calls"], doc["baseline"]["ok"]) == (80, 80)
    assert set(doc["ratio_to_baseline"]) == {
        "latency_p50",
        "latency_p90",
        "latency_p99",
        "latency_p99_9",
        "latency_max",
        "throughput",
    }
    assert all(ratio > 0 for ratio in doc["ratio_to_baseline"].values())
    # Where and from which code it ran, so the figures can be read on another machine.
    facts = doc["machine"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert facts["git_commit"] == head and isinstance(facts["git_dirty"], bool)
    assert (facts["host"], facts["cpu_count"]) == (socket.gethostname(), os.cpu_count())
    assert facts["finmesh_version"] == "0.1.0" and facts["grpcio"] == grpc.__version__
    assert facts["python"].startswith("3.") and 1 <= facts["cpus_usable"] <= facts["cpu_count"]
    for when in ("start", "end"):
        assert len(facts["load_average"][when]) == 3 and all(v >= 0 for v in facts["load_average"][when])

    report = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Machine and code</h2>" in report and head in report and f"<td>{grpc.__version__}</td>" in report
    svgs = re.findall(r"<svg.*?</svg>", report, re.S)
    assert len(svgs) == 3 and "http://" not in report.replace("http://www.w3.org/2000/svg", "")
    for svg in svgs:
        ElementTree.fromstring(svg)  # well-formed, so browsers draw it
    assert "<h2>By scenario</h2>" in report
    for series in ("p50 per second", "p99 per second", "this run", "no-op baseline"):
        points = re.search(rf'data-name="{series}"[^>]*points="([^"]+)"', report)
        assert points and len(points.group(1).split()) >= 2, series

    # A run compared with itself: every ratio 1, nothing differs.
    capsys.readouterr()
    assert _cli("--compare", str(out / "result.json"), str(out / "result.json")) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^throughput .* 1\.00×$", printed, re.M) and re.search(r"^p99 .* 1\.00×$", printed, re.M)
    assert f"- same host: {socket.gethostname()}" in printed and f"- same commit {head[:12]}" in printed
    assert "differ" not in printed.replace("they may differ", "")


async def test_mutual_tls_target(tmp_path: Path, monkeypatch) -> None:
    """A target that wants a client certificate, reached through a name other than the address (a port-forward)."""
    ca = issue("load-ca")
    ca_cert, _ = write_pair(tmp_path, "ca", ca)
    server_cert, server_key = write_pair(tmp_path, "server", issue("payments", ca, dns="payments.finmesh"))
    client_cert, client_key = write_pair(tmp_path, "client", issue("load", ca))
    credentials = grpc.ssl_server_credentials(
        [(server_key.read_bytes(), server_cert.read_bytes())],
        root_certificates=ca_cert.read_bytes(),
        require_client_auth=True,
    )
    recorder, server, port = await _recording_server(credentials)
    monkeypatch.setenv(TOKEN_ENV, "tok")
    out = tmp_path / "out"
    try:
        code = await asyncio.to_thread(
            _cli,
            "--target",
            f"127.0.0.1:{port}",
            "--scenario",
            "balance",
            "--mode",
            "closed",
            "--count",
            "10",
            "--warmup",
            "0",
            "--tls-ca",
            str(ca_cert),
            "--tls-cert",
            str(client_cert),
            "--tls-key",
            str(client_key),
            "--tls-server-name",
            "payments.finmesh",
            "--token-env",
            TOKEN_ENV,
            "--accounts-file",
            str(_accounts_file(tmp_path)),
            "--out",
            str(out),
        )
    finally:
        await server.stop(0)
    assert code == 0
    assert json.loads((out / "result.json").read_text(encoding="utf-8"))["ok"] == 10
    assert len(recorder.calls) == 10 and all(md["baggage"] == "synthetic=true" for _, md, _ in recorder.calls)


def test_errors_are_counted_by_status_code_and_the_harness_exits_cleanly(tmp_path: Path, monkeypatch, capsys) -> None:
    """Nothing listens on the target: every call is UNAVAILABLE, results are still written, exit code 1."""
    monkeypatch.setenv(TOKEN_ENV, "tok")
    out = tmp_path / "out"
    code = _cli(
        "--target",
        f"127.0.0.1:{free_port()}",
        "--scenario",
        "balance",
        "--mode",
        "closed",
        "--concurrency",
        "2",
        "--count",
        "20",
        "--warmup",
        "0",
        "--timeout",
        "2",
        "--token-env",
        TOKEN_ENV,
        "--accounts-file",
        str(_accounts_file(tmp_path)),
        "--out",
        str(out),
    )
    assert code == 1
    doc = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert (doc["calls"], doc["ok"], doc["errors"]) == (20, 0, {"UNAVAILABLE": 20})
    assert "UNAVAILABLE=20" in capsys.readouterr().out
    assert (out / "report.html").exists()


def test_a_run_that_cannot_start_says_why(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert _cli("--target", "127.0.0.1:1", "--count", "5", "--out", str(tmp_path)) == 2
    assert "--accounts-file" in capsys.readouterr().err
    assert (
        _cli(
            "--target",
            "127.0.0.1:1",
            "--count",
            "5",
            "--token-env",
            TOKEN_ENV,
            "--accounts-file",
            str(_accounts_file(tmp_path)),
            "--out",
            str(tmp_path),
        )
        == 2
    )
    assert TOKEN_ENV in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


async def test_payment_runs_move_money_only_between_test_accounts(databases, tmp_path: Path) -> None:
    """Both engines drive real payments (and risk) between provisioned test accounts: every call succeeds, the
    test accounts' money only circles among them, customers' balances do not change, the books balance."""
    owner = f"load-test-{uuid.uuid4().hex[:8]}"
    async with payments_mesh(databases, tmp_path, synthetic_owner_ids=[owner]) as pay:
        c = pay.client
        customer_a, customer_b = await c.wallet(uuid.uuid4().hex), await c.wallet(uuid.uuid4().hex)
        await c.top_up(customer_a, 50_000)
        await c.pay(customer_a, customer_b, 1_000)
        customers_before = {a: await c.triple(a) for a in (customer_a, customer_b)}

        endpoint = Endpoint(pay.mesh.services["payments"].target, token=pay.mesh.issuer.customer(owner))
        async with grpc.aio.insecure_channel(endpoint.target) as channel:
            accounts = await provision(
                pay_grpc.PaymentsServiceStub(channel), owner, endpoint.metadata(), count=4, funding=10_000
            )
        closed = await run_load(
            Plan(mode="closed", concurrency=4, duration_s=1.5, warmup_s=0.3), payments=endpoint, accounts=accounts
        )
        opened = await run_load(
            Plan(mode="open", rate=25, duration_s=1.5, warmup_s=0.3), payments=endpoint, accounts=accounts
        )
        for result in (closed, opened):
            assert result.ok > 0 and not result.errors, dict(result.errors)
        assert opened.calls == 38  # 25/s for 1.5 s, the last send due at 1.48 s

        assert {a: await c.triple(a) for a in (customer_a, customer_b)} == customers_before
        test_balances = [await c.triple(a) for a in accounts.accounts]
        assert sum(total for _, _, total in test_balances) == 4 * 10_000, test_balances
        await pay.check_books()

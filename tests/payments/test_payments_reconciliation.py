"""Reconciliation of the fake bank's statement against the ledger: every kind of mismatch, each named."""

from __future__ import annotations

from pathlib import Path

import grpc

from finmesh.fakes.bank import FakeBank
from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.payments.harness import key, payments_mesh, refusal

OUTCOME = pb.ReconciliationOutcome


async def reconcile(client, csv_text: str, idem: str = "") -> pb.ReconcileStatementResponse:
    return await client.stub.ReconcileStatement(
        pb.ReconcileStatementRequest(idempotency_key=idem or key(), channel="bank", statement_csv=csv_text.encode())
    )


async def test_statement_with_every_kind_of_mismatch(databases, tmp_path: Path, bank: FakeBank) -> None:
    """Matched, amount mismatch, missing in the ledger (lost reply, unknown line), missing in the statement."""
    async with payments_mesh(databases, tmp_path, channel_urls={"bank": bank.url}, channel_timeout_seconds=0.5) as pay:
        c = pay.client
        alice = await c.wallet()
        matched = (await c.top_up(alice, 5_000, channel="bank")).operation
        changed = (await c.top_up(alice, 1_200, channel="bank")).operation
        unbooked = (await c.top_up(alice, 450, channel="bank")).operation
        paid_out = (await c.payout(alice, 700, channel="bank")).operation
        bank.script("timeout")  # the bank books it, our side never hears back: PENDING, not in the ledger
        assert (await refusal(c.top_up(alice, 999, channel="bank"))).reason == "CHANNEL_UNAVAILABLE"

        lines = bank.statement_csv().splitlines()
        lost = next(b for b in bank.operations.values() if b.amount == 999)
        statement = [lines[0]]
        for line in lines[1:]:
            reference = line.split(",")[0]
            if reference == unbooked.channel_reference:
                continue  # the bank's statement lacks it
            if reference == changed.channel_reference:
                line = line.replace(",1200,", ",1250,")
            statement.append(line)
        statement.append("BNK-STRANGER,300,CNY,2026-01-01T00:00:00+00:00")
        report = await reconcile(c, "\n".join(statement) + "\n")

        outcomes = {
            line.channel_reference: (line.outcome, line.statement_minor_units, line.ledger_minor_units)
            for line in report.lines
        }
        assert outcomes == {
            matched.channel_reference: (OUTCOME.RECONCILIATION_OUTCOME_MATCHED, 5_000, 5_000),
            changed.channel_reference: (OUTCOME.RECONCILIATION_OUTCOME_AMOUNT_MISMATCH, 1_250, 1_200),
            paid_out.channel_reference: (OUTCOME.RECONCILIATION_OUTCOME_MATCHED, -700, -700),
            lost.reference: (OUTCOME.RECONCILIATION_OUTCOME_MISSING_IN_LEDGER, 999, 0),
            "BNK-STRANGER": (OUTCOME.RECONCILIATION_OUTCOME_MISSING_IN_LEDGER, 300, 0),
            unbooked.channel_reference: (OUTCOME.RECONCILIATION_OUTCOME_MISSING_IN_STATEMENT, 0, 450),
        }
        assert (report.matched_count, report.mismatch_count) == (2, 4)

        # The next statement carries the late line: it matches, and earlier matches are not re-reported.
        late = [lines[0]] + [line for line in lines[1:] if line.startswith(unbooked.channel_reference + ",")]
        follow_up = await reconcile(c, "\n".join(late))
        assert [(line.channel_reference, line.outcome) for line in follow_up.lines] == [
            (unbooked.channel_reference, OUTCOME.RECONCILIATION_OUTCOME_MATCHED),
            (changed.channel_reference, OUTCOME.RECONCILIATION_OUTCOME_MISSING_IN_STATEMENT),
        ]
        await pay.check_books()


async def test_bad_statements_are_refused_line_by_line(databases, tmp_path: Path) -> None:
    """Wrong header, fractional amounts, bad currencies and duplicates are INVALID_ARGUMENT naming the line."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        header = await refusal(
            c.stub.ReconcileStatement(
                pb.ReconcileStatementRequest(idempotency_key=key(), channel="bank", statement_csv=b"ref,amount\nA,1\n")
            )
        )
        assert (header.code, header.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["statement_csv"])
        body = (
            "channel_reference,amount_minor_units,currency_code,booked_at\n"
            "A,12.34,CNY,2026-01-01T00:00:00Z\nB,5,XXX,2026-01-01T00:00:00Z\n"
            "C,5,CNY,yesterday\nD,5,CNY,2026-01-01T00:00:00Z\nD,6,CNY,2026-01-01T00:00:00Z\n"
        )
        bad = await refusal(reconcile(c, body))
        assert bad.fields == [f"statement_csv[line {n}]" for n in (2, 3, 4, 6)]
        idem = key()
        empty = await reconcile(c, "channel_reference,amount_minor_units,currency_code,booked_at\n", idem)
        assert (empty.matched_count, empty.mismatch_count) == (0, 0)
        assert (
            await reconcile(c, "channel_reference,amount_minor_units,currency_code,booked_at\n", idem)
        ).SerializeToString() == empty.SerializeToString()

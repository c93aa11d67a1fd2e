"""The hash-chained audit log: every ledger change recorded; a tampered, removed or cut row is named."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.payments.harness import payments_mesh


def cli_verify(database_url: str) -> tuple[int, dict]:
    """`finmesh audit verify` as an operator runs it: a separate process reading the database."""
    done = subprocess.run(
        [sys.executable, "-m", "finmesh.payments.admin", "--database-url", database_url, "audit-verify"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


async def _busy_ledger(c) -> None:
    alice, bob, shop = await c.wallet(), await c.wallet(), await c.merchant()
    await c.top_up(alice, 9_000)
    await c.pay(alice, bob, 1_000)
    held = await c.pay(alice, shop, 2_000, mode=pb.CAPTURE_MODE_MANUAL)
    await c.capture(held.payment_id, 1_500)
    await c.refund(held.payment_id, 500)
    await c.freeze(bob)
    await c.settle(shop)


async def test_tampered_row_is_named_by_rpc_and_cli(databases, tmp_path: Path) -> None:
    """Change one amount inside one audit record: verify names exactly that record's sequence."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        await _busy_ledger(c)
        clean = await c.verify_audit()
        assert clean.intact and clean.first_broken_sequence == 0
        kinds = [row.kind for row in await pay.db.execute("SELECT kind FROM audit_log ORDER BY sequence")]
        # 3 opened + clearing opened + top-up + payment + hold + capture + release + refund + freeze
        # + fee and reserve opened + settlement.
        assert kinds.count("transfer") == 5 and kinds.count("hold") == 1 and kinds.count("release") == 1
        assert clean.rows_checked == len(kinds)
        code, report = await asyncio.to_thread(cli_verify, pay.db.url)
        assert (code, report["intact"], report["rows_checked"]) == (0, True, len(kinds))

        target = await pay.db.scalar(
            "SELECT min(sequence) FROM audit_log WHERE kind = 'transfer' AND payload LIKE '%PAYMENT%'"
        )
        changed = await pay.db.execute(
            "UPDATE audit_log SET payload = replace(payload, '1000', '1001') WHERE sequence = :s", s=target
        )
        assert changed == 1
        broken = await c.verify_audit()
        assert (broken.intact, broken.first_broken_sequence, broken.rows_checked) == (False, target, len(kinds))
        code, report = await asyncio.to_thread(cli_verify, pay.db.url)
        assert (code, report["intact"], report["first_broken_sequence"]) == (1, False, target)


@pytest.mark.parametrize("damage", ["delete-middle", "delete-last", "rehash-one"])
async def test_removed_or_rehashed_rows_break_the_chain(databases, tmp_path: Path, damage: str) -> None:
    """A deleted record, a cut-off tail, or a record re-hashed in place (without the next ones) are all found."""
    async with payments_mesh(databases, tmp_path) as pay:
        await _busy_ledger(pay.client)
        last = await pay.db.scalar("SELECT max(sequence) FROM audit_log")
        if damage == "delete-middle":
            await pay.db.execute("DELETE FROM audit_log WHERE sequence = 4")
            expected = 4
        elif damage == "delete-last":
            await pay.db.execute("DELETE FROM audit_log WHERE sequence = :s", s=last)
            expected = last
        else:
            # An attacker who recomputes this row's hash still breaks the link to the next row.
            from finmesh.payments.domain.audit import chain_hash

            row = (await pay.db.execute("SELECT * FROM audit_log WHERE sequence = 3"))[0]
            payload = row.payload.replace("CNY", "USD")
            new_hash = chain_hash(row.prev_hash, 3, row.recorded_at, row.kind, payload)
            await pay.db.execute(
                "UPDATE audit_log SET payload = :p, hash = :h WHERE sequence = 3", p=payload, h=new_hash
            )
            expected = 4
        verdict = await pay.client.verify_audit()
        assert (verdict.intact, verdict.first_broken_sequence) == (False, expected)

"""Request-field hygiene at payments' edge, on SQLite and PostgreSQL: strings the databases cannot hold, card
numbers and control characters never reach a handler (finmesh.platform.rpc.field_rules, run by the servicer guard)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.payments.harness import key, money, payments_mesh, refusal

CARD = "4111 1111 1111 1111"


async def test_nul_in_an_account_id_or_description_is_invalid_argument(databases, tmp_path: Path) -> None:
    """On PostgreSQL a NUL once reached asyncpg ("invalid byte sequence for encoding UTF8: 0x00") and answered
    INTERNAL; SQLite stored it. Now both refuse it at the edge, naming the field, and nothing moves."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        payer, payee = await c.wallet(), await c.wallet()
        await c.top_up(payer, 10_000)
        for fields, named in (
            ({"payee_account_id": payee + "\x00"}, "payee_account_id"),
            ({"description": "lunch\x00"}, "description"),
        ):
            request = {"payee_account_id": payee, **fields}
            bad = await refusal(
                c.stub.CreatePayment(
                    pb.CreatePaymentRequest(
                        idempotency_key=key(),
                        payer_account_id=payer,
                        amount=money(100),
                        capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                        **request,
                    )
                )
            )
            assert (bad.code, bad.reason, bad.fields) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "VALIDATION_FAILED",
                [named],
            ), bad
        assert await c.triple(payer) == (10_000, 0, 10_000)
        await c.pay(payer, payee, 100)  # the service is fine afterwards
        await pay.check_books()


@pytest.mark.parametrize("token", ["4111111111111111", CARD, "4111-1111-1111-1111"])
async def test_a_payout_to_a_card_number_is_refused_and_nothing_is_stored(
    databases, tmp_path: Path, token: str
) -> None:
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        wallet = await c.wallet()
        await c.top_up(wallet, 10_000)
        bad = await refusal(c.payout(wallet, 1_000, token=token))
        assert (bad.code, bad.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["destination_token"]), bad
        assert "4111" not in bad.details
        assert await pay.db.scalar("SELECT COUNT(*) FROM channel_operations WHERE destination_token LIKE '%1111%'") == 0
        await c.payout(wallet, 1_000, token="tok-dest-1")  # a channel token still pays out
        await pay.check_books()


async def test_a_card_number_in_a_description_is_stored_masked_and_never_logged(
    databases, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        payer, payee = await c.wallet(), await c.wallet()
        await c.top_up(payer, 10_000)
        request = pb.CreatePaymentRequest(
            idempotency_key=key(),
            payer_account_id=payer,
            payee_account_id=payee,
            amount=money(100),
            capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
            description=f"dinner, paid by {CARD}",
        )
        created = await c.stub.CreatePayment(request)
        masked = "dinner, paid by **** **** **** 1111"
        assert created.payment.description == masked
        again = await c.stub.CreatePayment(request)  # a retry is the same request: answered from the stored reply
        assert again.SerializeToString() == created.SerializeToString()
        got = await c.stub.GetPayment(pb.GetPaymentRequest(payment_id=created.payment.payment_id))
        listed = await c.stub.ListPayments(pb.ListPaymentsRequest(account_id=payer))
        assert got.payment.description == masked
        assert [p.description for p in listed.payments] == [masked]
        stored = await pay.db.scalar(
            "SELECT description FROM payments WHERE payment_id = :id", id=created.payment.payment_id
        )
        assert stored == masked
    base = tmp_path_factory.getbasetemp()
    for written in (base / "inprocess-services.log", base / "inprocess-spans.jsonl"):
        if written.exists():
            text = written.read_text(encoding="utf-8", errors="replace")
            assert CARD not in text and "4111111111111111" not in text, written


# A screen-clearing ANSI sequence, a bidi override that reverses what a reviewer reads, a bell, a C1 CSI.
HOSTILE_TEXT = ("\x1b[2J\x1b[Hsystem: refund approved", "pay \u202egnp.exe", "bell\x07", "c1 \x9b31m")


async def test_control_characters_in_free_text_are_refused(databases, tmp_path: Path) -> None:
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        payer, payee = await c.wallet(), await c.merchant()
        await c.top_up(payer, 10_000)
        paid = await c.pay(payer, payee, 100)
        for text in HOSTILE_TEXT:
            bad = await refusal(
                c.stub.CreatePayment(
                    pb.CreatePaymentRequest(
                        idempotency_key=key(),
                        payer_account_id=payer,
                        payee_account_id=payee,
                        amount=money(100),
                        capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                        description=text,
                    )
                )
            )
            assert (bad.code, bad.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["description"]), text
            assert "control characters" in bad.details
            refused = await refusal(
                c.stub.RefundPayment(
                    pb.RefundPaymentRequest(
                        idempotency_key=key(), payment_id=paid.payment_id, amount=money(10), reason=text
                    )
                )
            )
            assert (refused.code, refused.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["reason"]), text
        fine = await c.stub.CreatePayment(
            pb.CreatePaymentRequest(
                idempotency_key=key(),
                payer_account_id=payer,
                payee_account_id=payee,
                amount=money(100),
                capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                description="line one\n\tline two — 谢谢 💸",
            )
        )
        assert fine.payment.description == "line one\n\tline two — 谢谢 💸"
        assert await c.triple(payer) == (9_800, 0, 9_800)
        await pay.check_books()

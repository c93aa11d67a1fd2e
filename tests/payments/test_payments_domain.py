"""The pure rules (no I/O): money arithmetic, ledger postings, limits, settlement rounding, audit chain, matching."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from finmesh.payments.domain import audit, ledger, reconciliation, settlement
from finmesh.payments.domain.ledger import AccountKind, AccountState, AccountStatus, Bucket, Posting, Transfer
from finmesh.payments.domain.limits import (
    ANY_BANK,
    PAYOUT,
    TOP_UP,
    BankCapPolicy,
    BankCaps,
    LimitPolicy,
    Limits,
    Usage,
    limit_day,
)
from finmesh.platform.errors import FailedPrecondition, InvalidArgument

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def account(
    account_id: str,
    available: int = 0,
    kind: AccountKind = AccountKind.CUSTOMER_WALLET,
    status: AccountStatus = AccountStatus.ACTIVE,
    held: int = 0,
    unsettled: int = 0,
) -> AccountState:
    return AccountState(account_id, "owner", kind, "CNY", status, "", available, held, unsettled, NOW)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 10_000)), max_size=60))
def test_random_transfers_keep_the_sum_and_never_overdraw(moves: list[tuple[int, int, int]]) -> None:
    """Whatever moves are tried, refused ones change nothing, the sum stays zero, wallets stay >= 0."""
    books = {
        "clearing": account("clearing", kind=AccountKind.CLEARING),
        **{f"w{i}": account(f"w{i}") for i in range(3)},
    }
    names = list(books)
    for source, destination, amount in moves:
        if source == destination:
            continue
        transfer = ledger.move(ledger.TransferKind.TRANSFER, names[source], names[destination], "CNY", amount)
        before = dict(books)
        try:
            books.update(ledger.post(books, transfer))
        except FailedPrecondition as refusal:
            assert refusal.reason == "INSUFFICIENT_FUNDS"
            assert books == before
        assert sum(a.total for a in books.values()) == 0
        assert all(a.available >= 0 for a in books.values() if a.kind is not AccountKind.CLEARING)


def test_posting_rules_name_the_first_broken_rule() -> None:
    """Currency, freezing, funds and held-bucket rules, in that order; a frozen account's hold still settles."""
    frozen = account("f", available=100, held=50, status=AccountStatus.FROZEN)
    books = {"f": frozen, "w": account("w", 10), "usd": replace(account("usd"), currency="USD")}
    cny = ("CNY", 20)
    with pytest.raises(FailedPrecondition) as refused:
        ledger.post(books, ledger.move(ledger.TransferKind.TRANSFER, "w", "usd", "CNY", 5))
    assert refused.value.reason == "CURRENCY_MISMATCH"
    with pytest.raises(FailedPrecondition) as refused:
        ledger.post(books, ledger.move(ledger.TransferKind.TRANSFER, "f", "w", *cny))
    assert refused.value.reason == "ACCOUNT_FROZEN"
    with pytest.raises(FailedPrecondition) as refused:
        ledger.post(books, ledger.move(ledger.TransferKind.TRANSFER, "w", "f", *cny))
    assert refused.value.reason == "INSUFFICIENT_FUNDS"
    after = ledger.post(books, ledger.move(ledger.TransferKind.CAPTURE, "f", "w", *cny, source_bucket=Bucket.HELD))
    assert (after["f"].held, after["w"].available) == (30, 30)
    with pytest.raises(ValueError, match="zero"):
        Transfer(ledger.TransferKind.TRANSFER, "CNY", (Posting("a", 0), Posting("b", 0)))


def test_payouts_name_unsettled_funds() -> None:
    """A merchant whose takings are unsettled hears UNSETTLED_FUNDS, not INSUFFICIENT_FUNDS."""
    merchant = account("m", available=100, unsettled=500, kind=AccountKind.MERCHANT)
    assert ledger.hold_settled(merchant, 100).held == 100
    with pytest.raises(FailedPrecondition) as refused:
        ledger.hold_settled(merchant, 101)
    assert refused.value.reason == "UNSETTLED_FUNDS"
    with pytest.raises(FailedPrecondition) as refused:
        ledger.hold_settled(merchant, 601)
    assert refused.value.reason == "INSUFFICIENT_FUNDS"


def test_limits_strictest_for_unknown_tiers_and_days_in_china_time() -> None:
    policy = LimitPolicy(
        {"low": {"CNY": Limits(1_000, 5_000, 9)}, "high": {"CNY": Limits(2_000, 3_000, 5, top_up=1_500, payout=800)}}
    )
    # Top-up and payout caps left out are the tier's single limit; the strictest of each applies.
    assert policy.limits_for("platinum", "CNY") == Limits(1_000, 3_000, 5, top_up=1_000, payout=800)
    assert policy.limits_for("low", "USD") is None
    assert policy.check("low", "CNY", 1_000, Usage(3_000, 1)) == Usage(4_000, 2)
    for amount, usage, limit in (
        (1_001, Usage(), "single"),
        (900, Usage(4_200, 1), "daily_amount"),
        (1, Usage(0, 9), "daily_count"),
    ):
        with pytest.raises(FailedPrecondition) as refused:
            policy.check("low", "CNY", amount, usage)
        assert (refused.value.reason, refused.value.metadata["limit"]) == ("LIMIT_EXCEEDED", limit)
    # 16:30 UTC is already the next day in Beijing (UTC+8).
    assert limit_day(datetime(2026, 3, 1, 16, 30, tzinfo=UTC), 480) == "2026-03-02"
    assert limit_day(datetime(2026, 3, 1, 15, 59, tzinfo=UTC), 480) == "2026-03-01"


@pytest.mark.parametrize(
    ("gross", "count", "fees", "reserve", "net"),
    [
        (10_000, 1, 60 + 10, 500, 9_430),  # exact
        (25, 1, 0 + 10, 1, 14),  # 0.15 rounds down to 0; 1.25 reserve floors to 1
        (84, 1, 1 + 10, 4, 69),  # 0.504 rounds half up to 1
        (5, 1, 5, 0, 0),  # the fixed fee is capped at gross: net never negative
        (0, 0, 0, 0, 0),
    ],
)
def test_settlement_rounding_rules(gross: int, count: int, fees: int, reserve: int, net: int) -> None:
    """Fee rate part rounds half up, reserve rounds down, caps keep net >= 0 (60 bp + 10 fixed, reserve 500 bp)."""
    split = settlement.split(gross, count, settlement.FeeSchedule(60, 10, 500))
    assert (split.fees, split.reserve, split.net) == (fees, reserve, net)


def test_round_half_up() -> None:
    assert [settlement.round_half_up(n, 10) for n in (4, 5, 6, 14, 15, 25)] == [0, 1, 1, 1, 2, 3]


@given(
    st.integers(0, 10**15),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 1_000),
)
def test_settlement_split_always_adds_up(gross: int, rate: int, fixed: int, reserve: int, count: int) -> None:
    split = settlement.split(gross, count, settlement.FeeSchedule(rate, fixed, reserve))
    assert split.fees + split.reserve + split.net == gross
    assert min(split.fees, split.reserve, split.net) >= 0


@given(
    st.lists(
        st.tuples(st.sampled_from(["transfer", "hold", "release"]), st.integers(1, 10**9)), min_size=1, max_size=30
    ),
    st.data(),
)
def test_any_single_change_to_the_chain_is_found(records: list[tuple[str, int]], data: st.DataObject) -> None:
    """Changing any field of any record is reported at that record (or, for a rewritten hash, the next)."""
    chain, prev = [], audit.GENESIS_HASH
    for sequence, (kind, amount) in enumerate(records, start=1):
        record = audit.append(prev, sequence, NOW.isoformat(), kind, {"amount": amount})
        chain.append(record)
        prev = record.hash
    assert audit.verify(chain).intact
    index = data.draw(st.integers(0, len(chain) - 1))
    field = data.draw(st.sampled_from(["payload", "kind", "recorded_at", "hash", "prev_hash"]))
    original = chain[index]
    tampered = audit.AuditRecord(**{**original.__dict__, field: getattr(original, field) + "x"})
    result = audit.verify([*chain[:index], tampered, *chain[index + 1 :]])
    assert result.first_broken_sequence == original.sequence


def test_chain_head_catches_a_cut_tail() -> None:
    first = audit.append(audit.GENESIS_HASH, 1, "t", "k", {})
    second = audit.append(first.hash, 2, "t", "k", {})
    state = audit.verify([first])
    assert audit.verify_head(state, 2, second.hash).first_broken_sequence == 2


def test_statement_parsing_and_matching() -> None:
    header = "channel_reference,amount_minor_units,currency_code,booked_at\n"
    statement = reconciliation.parse_statement(
        (header + "A,100,CNY,2026-01-01T10:00:00Z\nB,-50,CNY,2026-01-01T11:00:00+08:00\n\n").encode()
    )
    assert [(b.channel_reference, b.minor_units) for b in statement] == [("A", 100), ("B", -50)]
    assert reconciliation.statement_end(statement) == datetime(2026, 1, 1, 10, tzinfo=UTC)
    ledger_side = [
        reconciliation.Booking("A", 100, "CNY"),
        reconciliation.Booking("B", -50, "USD"),
        reconciliation.Booking("C", 7, "CNY"),
    ]
    lines = reconciliation.match(statement, ledger_side)
    assert [(line.channel_reference, line.outcome.value) for line in lines] == [
        ("A", "MATCHED"),
        ("B", "AMOUNT_MISMATCH"),
        ("C", "MISSING_IN_STATEMENT"),
    ]
    with pytest.raises(InvalidArgument):
        reconciliation.parse_statement(b"\xff\xfe")


def test_channel_caps_then_tier_caps_name_the_cap_they_enforce() -> None:
    """The channel's cap binds every account, the tier's only wallets (tier None: a merchant); both fail closed."""
    tiers = LimitPolicy({"low": {"CNY": Limits(1_000, 5_000, 9, top_up=4_000, payout=2_000)}})
    caps = BankCapPolicy(
        {"bank": {"CNY": BankCaps(top_up=3_000, payout=9_000)}, ANY_BANK: {"CNY": BankCaps(top_up=500, payout=500)}},
        tiers,
    )
    caps.check(TOP_UP, "bank", "CNY", 3_000, "low")
    caps.check(PAYOUT, "bank", "CNY", 9_000, None)
    refusals = {
        (TOP_UP, "bank", "CNY", 3_001, None): {
            "limit": "top_up",
            "scope": "channel",
            "channel": "bank",
            "limit_value": "3000",
        },
        (PAYOUT, "bank", "CNY", 2_001, "low"): {
            "limit": "payout",
            "scope": "tier",
            "tier": "low",
            "limit_value": "2000",
        },
        (TOP_UP, "other", "CNY", 501, None): {
            "limit": "top_up",
            "scope": "channel",
            "channel": "other",
            "limit_value": "500",
        },
        (TOP_UP, "bank", "USD", 1, None): {"limit": "top_up", "scope": "channel", "channel": "bank"},
        (PAYOUT, "bank", "CNY", 2_001, "platinum"): {
            "limit": "payout",
            "scope": "tier",
            "tier": "platinum",
            "limit_value": "2000",
        },
    }
    for args, metadata in refusals.items():
        with pytest.raises(FailedPrecondition) as refused:
            caps.check(*args)
        assert (refused.value.reason, refused.value.metadata) == ("LIMIT_EXCEEDED", metadata), args
    usd_tiers = BankCapPolicy({ANY_BANK: {"USD": BankCaps(10**6, 10**6)}}, tiers)
    usd_tiers.check(TOP_UP, "bank", "USD", 100, None)  # a merchant: the channel's cap only
    with pytest.raises(FailedPrecondition) as refused:
        usd_tiers.check(TOP_UP, "bank", "USD", 100, "low")  # a wallet in a currency no tier has limits for
    assert refused.value.metadata == {"limit": "top_up", "scope": "tier", "tier": "low"}

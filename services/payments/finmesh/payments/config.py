"""Payments settings (FINMESH_* environment variables; dicts as JSON)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from finmesh.payments.domain.limits import DEFAULT_BANK_CAPS, DEFAULT_LIMITS, BankCaps, Limits
from finmesh.payments.domain.settlement import FeeSchedule
from finmesh.platform.config import ServiceSettings


class PaymentsSettings(ServiceSettings):
    # What a payment does when risk does not answer in time: hold the funds
    # for a risk officer ("review"), or refuse with RISK_UNAVAILABLE ("decline").
    risk_unavailable_policy: Literal["review", "decline"] = "review"
    # Risk calls out at once; beyond that, checks wait and go to risk together as one AssessPayments call
    # when a call comes back (see clients.risk.RiskClient). Light traffic never waits. One makes the biggest
    # batches (least CPU per payment on both sides); more let checks use several risk replicas at once.
    risk_max_in_flight: int = Field(default=1, ge=1, le=1000)

    # Per-tier limits, tier -> currency -> {single, daily_amount, daily_count, top_up, payout}
    # in minor units, e.g. FINMESH_TIER_LIMITS='{"low": {"CNY": {"single": 5000000, ...}}}'.
    # top_up / payout cap one top-up / payout of a customer wallet; left out, they are `single`.
    tier_limits: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=lambda: {
            tier: {currency: vars(limits) for currency, limits in row.items()} for tier, row in DEFAULT_LIMITS.items()
        }
    )
    # Tier of users payments has no tier for (see store.tiers).
    default_tier: str = "medium"
    # Owners of the rollout probes' dedicated accounts: payments from them reach risk marked synthetic
    # (kept out of velocity, AML and indicators), e.g. FINMESH_SYNTHETIC_OWNER_IDS='["rollout-probe"]'.
    synthetic_owner_ids: list[str] = Field(default_factory=list)
    # Daily limits count calendar days at this offset from UTC (China: +8 h, no DST).
    limits_utc_offset_minutes: int = Field(default=480, ge=-720, le=840)

    # Settlement: fee rate and risk-reserve share in basis points, fixed fee per payment in minor units.
    settlement_fee_rate_bp: int = Field(default=60, ge=0, le=10_000)
    settlement_fee_fixed_minor_units: int = Field(default=0, ge=0)
    settlement_reserve_bp: int = Field(default=500, ge=0, le=10_000)

    # Banks, under the payment channel each serves (the `channel` of TopUp and Payout): channel -> base URL of
    # the bank's HTTP API, e.g. FINMESH_CHANNEL_URLS='{"icbc": "http://10.0.0.5:8080"}'.
    channel_urls: dict[str, str] = Field(default_factory=dict)
    channel_timeout_seconds: float = Field(default=2.0, gt=0)
    # Caps on one top-up and one payout through a bank, for every account: channel -> currency ->
    # {top_up, payout} in minor units; "*" covers channels not named (and currencies a channel's entry
    # leaves out). A channel and currency with no cap is refused, e.g.
    # FINMESH_CHANNEL_CAPS='{"icbc": {"CNY": {"top_up": 5000000, "payout": 5000000}}, "*": {...}}'.
    channel_caps: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=lambda: {
            channel: {currency: vars(caps) for currency, caps in row.items()}
            for channel, row in DEFAULT_BANK_CAPS.items()
        }
    )
    # test_* channels without a URL are served by an in-process sandbox bank that confirms at once;
    # production sets false.
    channel_sandbox: bool = True
    # PENDING operations older than this are looked up at their bank and finished by the sweeper.
    channel_pending_grace_seconds: float = Field(default=60.0, gt=0)
    channel_sweep_interval_seconds: float = Field(default=15.0, gt=0)

    # Authorized (manually captured) payments not captured within this time are voided, releasing the hold.
    authorization_ttl_seconds: float = Field(default=7 * 24 * 3600, gt=0)

    # How long the outbox relay's claim on events lasts: after a crash, events it had claimed (and their
    # accounts' later events) wait this long before a restarted or other replica sends them.
    outbox_lease_seconds: float = Field(default=10.0, gt=0)

    # Most commands one ledger transaction carries (group commit).
    writer_max_batch: int = Field(default=256, ge=1, le=5000)
    # Fault injection for crash tests: methods after whose commit the process
    # SIGKILLs itself before replying. Never set in production.
    failpoint_kill_after_commit: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tables_are_complete(self) -> PaymentsSettings:
        """Refuse to start on a limit or cap entry with missing or unknown keys, naming the setting."""
        for name, table in (("tier_limits", self.limit_table), ("channel_caps", self.bank_cap_table)):
            try:
                table()
            except TypeError as error:
                raise ValueError(f"{name}: {error}") from None
        return self

    def limit_table(self) -> dict[str, dict[str, Limits]]:
        return {tier: {cur: Limits(**values) for cur, values in row.items()} for tier, row in self.tier_limits.items()}

    def bank_cap_table(self) -> dict[str, dict[str, BankCaps]]:
        return {
            channel: {cur: BankCaps(**values) for cur, values in row.items()}
            for channel, row in self.channel_caps.items()
        }

    def fee_schedule(self) -> FeeSchedule:
        return FeeSchedule(
            self.settlement_fee_rate_bp, self.settlement_fee_fixed_minor_units, self.settlement_reserve_bp
        )

"""The mesh's service-level objectives, as data: what the rules, the alerts and the quality report are made from.

Availability (seed §7.3: 99.95%) counts a call as bad when the server failed it (the codes OTel's RPC
conventions call server faults); a caller's mistake (INVALID_ARGUMENT, NOT_FOUND, a refusal with a reason) is
the service working. Latency objectives are per class of RPC: a share of the class's successful calls faster
than a threshold, which must be one of the histogram's bucket bounds (finmesh.platform.observability.metrics.
LATENCY_BUCKETS) so that the ratio is counted, not interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVICES = ("identity", "payments", "risk", "notify")

# grpc status code names that mean the server failed (OTel semantic conventions for gRPC servers).
SERVER_FAULT_CODES = ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS")

# The period error budgets are counted over (seed §8.2 reports monthly).
BUDGET_PERIOD = "28d"


@dataclass(frozen=True)
class AvailabilityObjective:
    service: str  # the service_name label
    target: float  # share of calls not failed by the server

    @property
    def name(self) -> str:
        return f"{self.service}-availability"


@dataclass(frozen=True)
class LatencyObjective:
    name: str  # the RPC class, e.g. "payments-create"
    service: str  # the service_name label
    methods: str  # a regular expression over rpc_method (anchored by PromQL)
    threshold_seconds: float  # a bucket bound of rpc.server.call.duration
    target: float  # share of successful calls under the threshold


@dataclass(frozen=True)
class BurnRateAlert:
    """One multi-window, multi-burn-rate alert (The Site Reliability Workbook, ch. 5, table 5-8): fires when
    both windows burn the budget at least `factor` times faster than the period allows."""

    long_window: str
    short_window: str
    factor: float
    severity: str  # "page" or "ticket"
    # How long both windows must stay over before it fires: a blip that a longer window would outlast anyway
    # does not page (the windows, not this, carry the detection; it stays a fraction of the short window).
    hold: str = "0m"


AVAILABILITY = tuple(AvailabilityObjective(service, 0.9995) for service in SERVICES)

LATENCY = (
    LatencyObjective("payments-create", "payments", "CreatePayment", 0.25, 0.99),
    LatencyObjective("payments-read", "payments", "Get.*|List.*", 0.1, 0.99),
    LatencyObjective("risk-assess", "risk", "AssessPayment|AssessPayments", 0.1, 0.99),
    # Login and registration hash a password (argon2, deliberately slow).
    LatencyObjective("identity-login", "identity", "Login|CompleteLogin|RegisterUser", 1.0, 0.99),
    LatencyObjective("identity-keys", "identity", "GetPublicKeys|GetServiceToken|RefreshToken", 0.1, 0.99),
    LatencyObjective("notify-intake", "notify", "DeliverEvent|DeliverEvents|SendNotification", 0.25, 0.99),
)

# 2% of a 30-day budget in 1 h, 5% in 6 h (page); 10% in 1 d, 10% in 3 d (ticket).
BURN_RATE_ALERTS = (
    BurnRateAlert("1h", "5m", 14.4, "page", hold="2m"),
    BurnRateAlert("6h", "30m", 6.0, "page", hold="15m"),
    BurnRateAlert("1d", "2h", 3.0, "ticket", hold="1h"),
    BurnRateAlert("3d", "6h", 1.0, "ticket", hold="3h"),
)


# What burns slower than a budget: work waiting too long, or a state that must not last.


@dataclass(frozen=True)
class QueueAgeLimit:
    """Notify's oldest waiting message per lane: the age past which the lane is stuck, not merely retrying."""

    lane: str
    max_age_seconds: float
    severity: str


# An outbox event undelivered this long means its consumer is down or failing every attempt (the relay
# retries within seconds); held 10 minutes so a consumer's restart or a rollout does not alert.
OUTBOX_MAX_AGE_SECONDS = 300.0
OUTBOX_AGE_HOLD = "10m"
# Dead letters wait for an operator's redrive; 15 minutes lets a redrive already under way finish.
DEAD_LETTERS_HOLD = "15m"
# A service whose metrics are gone is blind to every other alert here.
METRICS_ABSENT_HOLD = "5m"
# Payments checks the ledger every four metric samples (a minute by default): a check older than 15 minutes
# has stopped running, and FinmeshLedgerInvariantViolated can no longer page.
LEDGER_CHECK_MAX_AGE_SECONDS = 900.0
LEDGER_CHECK_HOLD = "10m"
# Lanes retry with backoff up to notify's delivery_max_backoff_seconds (15 min), so a limit is above a few
# retries. MARKETING has none: quiet hours hold its messages for the night on purpose.
NOTIFY_QUEUE_AGE_LIMITS = (
    QueueAgeLimit("SECURITY", 600.0, "page"),  # sign-in codes: a user is waiting
    QueueAgeLimit("TRANSACTIONAL", 1800.0, "ticket"),
)
NOTIFY_QUEUE_AGE_HOLD = "10m"

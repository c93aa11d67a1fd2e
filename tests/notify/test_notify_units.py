"""The pure parts of notify and the outbox: templates, business days, deadlines, consent, backoff, signatures."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from finmesh.notify.config import NotifySettings
from finmesh.notify.domain import complaints, signing
from finmesh.notify.domain.business_days import BusinessCalendar
from finmesh.notify.domain.consent import ConsentRecord, decide_marketing, parse_hhmm
from finmesh.notify.domain.events import OPERATORS, plan, webhook_matches
from finmesh.notify.domain.retry import RetryPolicy
from finmesh.notify.domain.templates import (
    LOCALES,
    TEMPLATES,
    missing_params,
    render,
    render_subject,
    resolve_locale,
)
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.messaging.relay import RelayPolicy, head_runs

SH = ZoneInfo("Asia/Shanghai")


def sh(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=SH)


# -- templates --------------------------------------------------------------------------------


def test_every_template_exists_in_both_locales_with_the_same_parameters() -> None:
    """A parameter used in one language but not the other would render a hole for some users."""
    for template in TEMPLATES.values():
        assert set(template.body) == set(LOCALES) == set(template.subject), template.name
        zh = {p for p in template.params() if "${" + p + "}" in template.body["zh-CN"] + template.subject["zh-CN"]}
        en = {p for p in template.params() if "${" + p + "}" in template.body["en"] + template.subject["en"]}
        assert zh == en, template.name


def test_locale_of_request_then_user_then_default() -> None:
    """The request's locale wins, then the user's; variants map to the nearest; zh-CN is the default."""
    assert resolve_locale("en", "zh-CN") == "en"
    assert resolve_locale("", "en") == "en"
    assert resolve_locale("", "en-GB") == "en"
    assert resolve_locale("", "zh-TW") == "zh-CN"
    assert resolve_locale("", "") == "zh-CN"
    assert resolve_locale("fr", "") == "zh-CN"


def test_verification_code_renders_in_both_languages() -> None:
    params = {"code": "482913", "minutes": "5"}
    assert "验证码是 482913" in render("verification_code", "zh-CN", params)
    assert "code is 482913" in render("verification_code", "en", params)
    assert render_subject("verification_code", "en", params) == "Your verification code"
    assert missing_params("verification_code", {"code": "1"}) == ["minutes"]


def test_marketing_templates_carry_an_opt_out_and_only_marketing_category() -> None:
    """Seed 5.4: every marketing message says how to opt out; codes can never be sent as marketing."""
    for name in ("marketing_offer", "marketing_newsletter"):
        t = TEMPLATES[name]
        assert t.categories == {"MARKETING"}
        assert "退订" in t.body["zh-CN"] or "关闭营销" in t.body["zh-CN"]
        assert "opt out" in t.body["en"] or "stop these" in t.body["en"].lower()
    assert TEMPLATES["verification_code"].categories == {"SECURITY"}


# -- events -----------------------------------------------------------------------------------


def test_risk_alert_plans_an_operator_alert_with_every_reason() -> None:
    planned = plan(
        "risk.alert.raised.v1",
        "u1",
        {
            "alert_id": "a1",
            "level": "CRITICAL",
            "user_id": "u1",
            "account_id": "acc",
            "payment_id": "",
            "reasons": "X, Y",
        },
    )
    assert [(p.user_id, p.template, p.category) for p in planned] == [(OPERATORS, "operator_risk_alert", "SECURITY")]
    assert planned[0].params["payment_id"] == "-"
    assert "X, Y" in render("operator_risk_alert", "en", planned[0].params)


def test_webhook_patterns() -> None:
    assert webhook_matches(["payments.payment.*"], "payments.payment.captured.v1")
    assert webhook_matches(["*"], "anything")
    assert not webhook_matches(["payments.payment.*"], "payments.topup.succeeded.v1")
    assert webhook_matches(["payments.topup.succeeded.v1"], "payments.topup.succeeded.v1")


# -- business days and complaint deadlines -----------------------------------------------------


def test_business_days_skip_weekends_and_keep_the_time_of_day() -> None:
    cal = BusinessCalendar()
    friday = sh(2026, 3, 6, 15, 30)
    assert cal.add_business_days(friday, 2) == sh(2026, 3, 10, 15, 30)  # Tuesday
    assert cal.add_business_days(friday, 5) == sh(2026, 3, 13, 15, 30)  # next Friday


def test_a_clock_started_on_a_weekend_starts_monday_midnight() -> None:
    cal = BusinessCalendar()
    assert cal.add_business_days(sh(2026, 3, 7, 10), 2) == sh(2026, 3, 11, 0, 0)  # Sat -> Wed 00:00


def test_holidays_do_not_count_and_make_up_workdays_do() -> None:
    cal = BusinessCalendar(holidays=frozenset({date(2026, 3, 9)}), extra_workdays=frozenset({date(2026, 3, 7)}))
    assert cal.add_business_days(sh(2026, 3, 6, 9), 1) == sh(2026, 3, 7, 9)  # the Saturday is a workday
    assert cal.add_business_days(sh(2026, 3, 6, 9), 2) == sh(2026, 3, 10, 9)  # Monday is a holiday


def test_business_days_are_counted_in_the_business_time_zone() -> None:
    """Friday 23:00 UTC is already Saturday in Shanghai: the clock starts Monday 00:00 Shanghai time."""
    due = BusinessCalendar().add_business_days(datetime(2026, 3, 6, 23, 0, tzinfo=UTC), 2)
    assert due == sh(2026, 3, 11, 0, 0)
    assert due.tzinfo == UTC


def test_complaint_deadlines_from_opening() -> None:
    d = complaints.deadlines(sh(2026, 3, 6, 10), BusinessCalendar())
    assert (d.accept_due, d.respond_due, d.resolve_due) == (
        sh(2026, 3, 7, 10),
        sh(2026, 3, 10, 10),
        sh(2026, 3, 13, 10),
    )


def test_breaches_are_stages_past_due_and_not_reached() -> None:
    d = complaints.deadlines(sh(2026, 3, 6, 10), BusinessCalendar())
    assert complaints.breached_stages("OPEN", d, sh(2026, 3, 6, 11), set()) == []
    assert complaints.breached_stages("OPEN", d, sh(2026, 3, 7, 10), set()) == ["accept"]
    assert complaints.breached_stages("OPEN", d, sh(2026, 3, 10, 10), {"accept"}) == ["respond"]
    assert complaints.breached_stages("RESPONDED", d, sh(2026, 3, 20), set()) == ["resolve"]
    assert complaints.breached_stages("RESOLVED", d, sh(2026, 3, 20), set()) == []


def test_complaints_move_one_step_at_a_time() -> None:
    complaints.check_transition("OPEN", "ACCEPTED")
    complaints.check_transition("RESPONDED", "RESOLVED")
    for current, target in (("OPEN", "RESOLVED"), ("ACCEPTED", "ACCEPTED"), ("RESOLVED", "RESPONDED")):
        with pytest.raises(FailedPrecondition) as refused:
            complaints.check_transition(current, target)
        assert refused.value.reason == "INVALID_STATE"


# -- consent and quiet hours ------------------------------------------------------------------


def test_marketing_without_consent_or_after_opt_out_is_refused() -> None:
    now = sh(2026, 3, 6, 12)
    assert decide_marketing(None, now).refusal == "CONSENT_MISSING"
    assert decide_marketing(ConsentRecord(granted=False), now).refusal == "OPTED_OUT"
    assert decide_marketing(ConsentRecord(granted=True), now).send


@pytest.mark.parametrize(
    ("local", "until"),
    [
        (sh(2026, 3, 6, 23, 30), sh(2026, 3, 7, 8, 0)),
        (sh(2026, 3, 7, 7, 59), sh(2026, 3, 7, 8, 0)),
        (sh(2026, 3, 7, 8, 0), None),
        (sh(2026, 3, 6, 21, 59), None),
    ],
)
def test_quiet_hours_wrapping_midnight_defer_to_their_end(local: datetime, until: datetime | None) -> None:
    consent = ConsentRecord(granted=True, quiet_start="22:00", quiet_end="08:00", time_zone="Asia/Shanghai")
    decision = decide_marketing(consent, local.astimezone(UTC))
    assert decision.send
    assert decision.not_before == (until.astimezone(UTC) if until else None)


def test_quiet_hours_are_read_in_the_users_time_zone() -> None:
    """12:30 UTC is 13:30 in London (quiet 13:00-14:00 there) but 20:30 in Shanghai."""
    now = datetime(2026, 3, 6, 13, 30, tzinfo=UTC)
    london = ConsentRecord(True, "13:00", "14:00", "Europe/London")
    assert decide_marketing(london, now).not_before == datetime(2026, 3, 6, 14, 0, tzinfo=UTC)
    assert decide_marketing(ConsentRecord(True, "13:00", "14:00", "Asia/Shanghai"), now).not_before is None


def test_hhmm_parsing() -> None:
    assert parse_hhmm("08:05") is not None
    for bad in ("8:05", "24:00", "12:60", "ab:cd", ""):
        assert parse_hhmm(bad) is None


# -- retries ----------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=1.0, max_seconds=10.0)
    rng = random.Random(7)
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (30, 10.0)):
        delays = [policy.delay(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter actually spreads retries
    assert not policy.exhausted(4) and policy.exhausted(5)


def test_default_webhook_retries_span_more_than_a_day() -> None:
    settings = NotifySettings()
    assert settings.retry_policy("WEBHOOK").shortest_span() > timedelta(days=1).total_seconds()
    assert settings.retry_policy("SMS").max_attempts == settings.delivery_max_attempts


def test_relay_backoff_and_probe_delay_are_bounded() -> None:
    policy = RelayPolicy(base_backoff_seconds=0.5, max_backoff_seconds=8, max_probe_interval_seconds=2)
    assert all(0.25 <= policy.backoff(0) <= 0.5 for _ in range(50))
    assert all(4 <= policy.backoff(10) <= 8 for _ in range(50))
    assert all(1 <= policy.probe_delay(10) <= 2 for _ in range(50))


# -- webhook signatures -----------------------------------------------------------------------


def test_signature_verifies_and_rejects_stale_tampered_and_malformed() -> None:
    body, secret, now = b'{"a":1}', "whsec_x", 1_700_000_000
    header = signing.sign(secret, now, body)
    assert header.startswith("v1=")
    assert signing.verify(secret, str(now), header, body, now + 10) == ""
    assert signing.verify(secret, str(now), header, body, now + 301) == "stale"
    assert signing.verify(secret, str(now), header, b'{"a":2}', now) == "mismatch"
    assert signing.verify("other", str(now), header, body, now) == "mismatch"
    assert signing.verify(secret, "soon", header, body, now) == "malformed"
    assert signing.verify(secret, "¹⁷⁰⁰", header, body, now) == "malformed"  # digits to isdigit(), not to int()


# -- outbox ordering --------------------------------------------------------------------------


def test_head_runs_start_at_the_oldest_pending_event_and_stop_at_a_gap() -> None:
    """A relay may only deliver an unbroken run from each aggregate's oldest pending event."""
    row = lambda i, agg: SimpleNamespace(id=i, aggregate_id=agg)  # noqa: E731
    candidates = [row(1, "a"), row(2, "a"), row(4, "a"), row(5, "b"), row(7, "c")]
    pending = [row(1, "a"), row(2, "a"), row(3, "a"), row(4, "a"), row(5, "b"), row(6, "c"), row(7, "c")]
    runs = head_runs(candidates, pending)
    assert [[r.id for r in run] for run in runs] == [[1, 2], [5]]  # a stops before 3; c's head 6 is elsewhere

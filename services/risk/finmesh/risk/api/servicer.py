"""RiskService servicer: protobuf in, domain values to the use cases, protobuf out; refusals as domain errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from opentelemetry import trace

from finmesh.platform.errors import DomainError, InvalidArgument
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.rpc_tracing import batch_item_span
from finmesh.platform.rpc.field_rules import checker_for
from finmesh.platform.storage.db import is_transient
from finmesh.platform.storage.idempotency import KeyedCall
from finmesh.risk.api import convert, validate
from finmesh.risk.usecases import assessment_metrics
from finmesh.risk.usecases.assessment_writer import AssessmentWriter
from finmesh.risk.usecases.blocklist import BlockList
from finmesh.risk.usecases.monitoring import Monitoring
from finmesh.risk.usecases.onboarding import Onboarding
from finmesh.risk.usecases.rules import RulesRegistry
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc

_log = get_logger("finmesh.risk")
_CHECK_RULES = checker_for(pb.PaymentCheck.DESCRIPTOR)


class RiskServicer(pb_grpc.RiskServiceServicer):
    def __init__(
        self,
        *,
        rules: RulesRegistry,
        writer: AssessmentWriter,
        onboarding: Onboarding,
        block_list: BlockList,
        monitoring: Monitoring,
        on_incident: Callable[[], None] | None = None,
    ):
        self._rules = rules
        self.writer = writer
        self._onboarding = onboarding
        self._block_list = block_list
        self._monitoring = monitoring
        # Wakes the outbox relay and the emergency responder after a new incident commits.
        self._on_incident = on_incident or (lambda: None)

    # -- assessments ------------------------------------------------------------

    async def AssessPayment(self, request: pb.AssessPaymentRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.AssessPaymentResponse(assessment=await self._assess(request))

    async def AssessPayments(self, request: pb.AssessPaymentsRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.check_count(len(request.checks))
        assessment_metrics.request_batch(len(request.checks))
        # Each check is its own task, so each runs in its payment's trace; they meet in the writer's next batch.
        batch = trace.Link(trace.get_current_span().get_span_context())
        results = await asyncio.gather(*(self._check(i, check, batch) for i, check in enumerate(request.checks)))
        return pb.AssessPaymentsResponse(results=results)

    async def _check(self, index: int, check: pb.PaymentCheck, batch: trace.Link) -> pb.PaymentCheckResult:
        """One check of a batch: its payment's verdict, or the refusal AssessPayment would have answered."""
        # The contract's field rules, which the guard leaves to each check (AssessPaymentsRequest.checks is per_item).
        if violations := _CHECK_RULES.violations(check, f"checks[{index}]."):
            return pb.PaymentCheckResult(refusal=convert.refusal(InvalidArgument(violations), ""))
        with batch_item_span("risk.assess_payment", check.traceparent, check.tracestate, batch):
            try:
                return pb.PaymentCheckResult(assessment=await self._assess(check.payment))
            except DomainError as error:
                return pb.PaymentCheckResult(refusal=convert.refusal(error, f"checks[{index}].payment."))
            except Exception as error:
                if is_transient(error):
                    # The database unreachable fails the call UNAVAILABLE, which the caller's channel retries
                    # whole (checks are idempotent on payment id); a refusal inside an answer it would not.
                    raise
                _log.exception("assessment_check_failed", index=index)  # a bug fails its own check only
                return pb.PaymentCheckResult(refusal=convert.unexpected_refusal(error))

    async def _assess(self, request: pb.AssessPaymentRequest) -> pb.Assessment:
        facts = validate.payment_facts(request)
        # A retry gets the recorded verdict (looked up under the payer's lock), whatever the rules are now.
        outcome = await self.writer.submit(facts)
        if outcome.raised_alert:
            self._on_incident()
        row = outcome.row
        _log.info(
            "payment_assessed",
            payment_id=row.payment_id,
            decision=row.decision,
            score=row.score,
            warning_level=row.warning_level,
            reasons=[r["code"] for r in row.reasons],
            rules_version=row.rules_version,
        )
        return convert.assessment(row)

    async def AssessOnboarding(self, request: pb.AssessOnboardingRequest, context: grpc.aio.ServicerContext) -> Any:
        ip, country = validate.onboarding(request)
        rules = self._rules.active.rules
        call = KeyedCall("AssessOnboarding", request, pb.AssessOnboardingResponse, convert.onboarding_reply)
        reply = await self._onboarding.assess(
            call,
            rules,
            user_id=request.user_id,
            age_years=request.age_years,
            user_kind=request.user_kind,
            device_id=request.device_id,
            ip_address=ip,
            ip_country=country,
        )
        _log.info(
            "onboarding_assessed", tier=pb.RiskTier.Name(reply.tier), score=reply.score, rules_version=rules.version
        )
        return reply

    # -- rules --------------------------------------------------------------------

    async def GetRules(self, request: pb.GetRulesRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._rules.refresh()  # another replica may have activated newer rules since the last poll
        active = self._rules.active
        return pb.GetRulesResponse(
            version=active.rules.version,
            source=active.source,
            activated_at=convert.timestamp(active.activated_at),
            rules_file_error=self._rules.file_error,
        )

    async def UpdateRules(self, request: pb.UpdateRulesRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.idempotency_key(request.idempotency_key)
        return await self._rules.update(
            KeyedCall(
                "UpdateRules",
                request,
                pb.UpdateRulesResponse,
                lambda rules: pb.UpdateRulesResponse(version=rules.version),
            ),
            request.source,
        )

    # -- block lists ----------------------------------------------------------------

    async def AddBlockListEntry(self, request: pb.AddBlockListEntryRequest, context: grpc.aio.ServicerContext) -> Any:
        now = datetime.now(UTC)
        kind, value, expires = validate.block_entry(request, now)
        call: KeyedCall[Any, pb.AddBlockListEntryResponse] = KeyedCall(
            "AddBlockListEntry",
            request,
            pb.AddBlockListEntryResponse,
            lambda row: pb.AddBlockListEntryResponse(entry=convert.block_entry(row)),
        )
        reply = await self._block_list.add(
            call, kind=kind, value=value, reason=request.reason, expires_at=expires, now=now
        )
        _log.info("block_list_entry_added", entry_id=reply.entry.entry_id, kind=kind.value)
        return reply

    async def RemoveBlockListEntry(
        self, request: pb.RemoveBlockListEntryRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        validate.removal(request)
        call: KeyedCall[None, pb.RemoveBlockListEntryResponse] = KeyedCall(
            "RemoveBlockListEntry",
            request,
            pb.RemoveBlockListEntryResponse,
            lambda _: pb.RemoveBlockListEntryResponse(),
        )
        reply = await self._block_list.remove(call, request.entry_id)
        _log.info("block_list_entry_removed", entry_id=request.entry_id)
        return reply

    async def ListBlockListEntries(
        self, request: pb.ListBlockListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        kind = validate.optional_kind(request.kind, validate.BLOCK_KINDS, pb.BLOCK_LIST_KIND_UNSPECIFIED, "kind")
        size, before = validate.page(request.page_size, request.page_token)
        rows = await self._block_list.page(kind, before, size)
        return pb.ListBlockListEntriesResponse(
            entries=[convert.block_entry(r) for r in rows[:size]], next_page_token=_next_token(rows, size)
        )

    # -- reports, alerts, indicators ----------------------------------------------------

    async def ListAmlReports(self, request: pb.ListAmlReportsRequest, context: grpc.aio.ServicerContext) -> Any:
        kind = validate.optional_kind(request.kind, validate.AML_KINDS, pb.AML_REPORT_KIND_UNSPECIFIED, "kind")
        size, before = validate.page(request.page_size, request.page_token)
        rows = await self._monitoring.aml_reports(kind, before, size)
        return pb.ListAmlReportsResponse(
            reports=[convert.aml_report(r) for r in rows[:size]], next_page_token=_next_token(rows, size)
        )

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: grpc.aio.ServicerContext) -> Any:
        level = validate.optional_kind(request.min_level, validate.LEVELS, pb.WARNING_LEVEL_UNSPECIFIED, "min_level")
        size, before = validate.page(request.page_size, request.page_token)
        rows = await self._monitoring.alerts(level, before, size)
        return pb.ListAlertsResponse(
            alerts=[convert.alert(r) for r in rows[:size]], next_page_token=_next_token(rows, size)
        )

    async def GetRiskIndicators(self, request: pb.GetRiskIndicatorsRequest, context: grpc.aio.ServicerContext) -> Any:
        start, end, size = validate.indicator_range(request)
        buckets = await self._monitoring.indicators(start, end, size)
        return pb.GetRiskIndicatorsResponse(buckets=[convert.indicator_bucket(b) for b in buckets])


def _next_token(rows: list[Any], size: int) -> str:
    """More rows than asked for means another page: it starts below the last seq shown."""
    return str(rows[size - 1].seq) if len(rows) > size else ""

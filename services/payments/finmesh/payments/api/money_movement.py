"""Money in and out (top-up, payout through a bank), batch transfers, and account statements."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from finmesh.payments.api import convert
from finmesh.payments.api.common import (
    MAX_ID,
    Context,
    ServicerBase,
    amount_violations,
    decode_token,
    encode_token,
    page_size,
    require_id,
    valid_id,
)
from finmesh.payments.clients.banks import Bank, BankUnavailable
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import top_ups_and_payouts as usecase
from finmesh.payments.usecases import transfers
from finmesh.payments.usecases.ownership import require_account_owner, require_own_sources
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, Unavailable, Validator
from finmesh.platform.money import validate_amount
from finmesh.platform.rpc.field_rules import checker_for
from finmesh.platform.storage.idempotency import caller_scope, derived_id_name, request_fingerprint, validate_key

# Operation ids are derived from (method, idempotency key), or for a key another caller's operation holds
# already from (method, caller, key): the bank sees the same id on every retry.
_OPERATION_NAMESPACE = uuid.UUID("3b6f0d3a-2c1e-4f53-8a9e-3f5d8f7c2b41")
MAX_BATCH = 1000
_TRANSFER_RULES = checker_for(pb.TransferSpec.DESCRIPTOR)


class MoneyMovementRpcs(ServicerBase):
    async def TopUp(self, request: pb.TopUpRequest, context: Context) -> Any:
        return await self._bank_operation("TopUp", usecase.TOP_UP, request, pb.TopUpResponse, context)

    async def Payout(self, request: pb.PayoutRequest, context: Context) -> Any:
        return await self._bank_operation("Payout", usecase.PAYOUT, request, pb.PayoutResponse, context)

    async def _bank_operation(self, method: str, kind: str, request: Any, response_type: Any, context: Context) -> Any:
        bank = self._validate_bank_request(request, payout=kind == usecase.PAYOUT)
        # Before the replay: another customer's key must not read this one's stored answer.
        await require_account_owner(self.deps.reads, request.account_id)
        await self.require_test_accounts(context, [request.account_id])
        prior = await self.replay(method, request, response_type)
        if prior is not None:
            return prior
        scope = caller_scope(request)
        operation = usecase.OperationRequest(
            operation_id=str(uuid.uuid5(_OPERATION_NAMESPACE, f"{method}:{request.idempotency_key}")),
            own_operation_id=str(
                uuid.uuid5(_OPERATION_NAMESPACE, derived_id_name(method, scope, request.idempotency_key))
            ),
            idempotency_scope=scope,
            kind=kind,
            account_id=request.account_id,
            channel=request.channel,
            currency=request.amount.currency_code,
            amount=request.amount.minor_units,
            destination_token=getattr(request, "destination_token", ""),
            idempotency_key=request.idempotency_key,
            request_hash=request_fingerprint(request),
        )

        begun: list[str] = []  # the id begin settled on (see usecase.begin), read once the writer has run it

        async def begin(uow: UnitOfWork) -> Any:
            op = await usecase.begin(uow, operation, self.deps.bank_caps)
            begun[:] = [op.operation_id]
            return op

        # Step 1: check the caps and that the ledger could post it, record the operation (a payout also holds
        # the funds). Only a refusal is final here, unless a concurrent call with this key has finished
        # meanwhile: then its answer is.
        started = await self.submit(
            method, request, response_type, begin, lambda _: response_type(), record_success=False
        )
        if started.HasField("operation"):
            return started
        operation = dataclasses.replace(operation, operation_id=begun[0])
        try:
            answer = await bank.execute(operation.order())
        except BankUnavailable:
            raise Unavailable(
                "CHANNEL_UNAVAILABLE", f"channel {request.channel} did not answer; retry with the same key"
            ) from None

        async def finish(uow: UnitOfWork) -> Any:
            return await usecase.finish(uow, operation.operation_id, answer)

        return await self.submit(method, request, response_type, finish, operation_reply(response_type))

    def _validate_bank_request(self, request: Any, *, payout: bool) -> Bank:
        validate_key(request.idempotency_key)
        v = Validator()
        v.require(valid_id(request.account_id), "account_id", f"required, at most {MAX_ID} characters")
        # The payment channel names the bank that serves it.
        bank = self.deps.banks.get(request.channel) if request.channel.isidentifier() else None
        v.require(valid_id(request.channel) and bank is not None, "channel", "required: a configured channel")
        v.violations.extend(amount_violations(request))
        if payout:
            # Its bound, and that it is no card number, are the contract's field rules (checked by the guard).
            v.require(
                bool(request.destination_token),
                "destination_token",
                "required: the channel's opaque destination reference",
            )
        v.raise_if_any()
        assert bank is not None
        return bank

    async def BatchCreateTransfers(self, request: pb.BatchCreateTransfersRequest, context: Context) -> Any:
        validate_key(request.idempotency_key)
        items, unreadable = _batch_items(request)
        # Every source is checked (one foreign source refuses the whole call), except the ids that break the
        # contract's field rules: such an item moves nothing, and its value may not even be storable.
        looked_up = [i for index, i in enumerate(items) if index not in unreadable]
        await require_own_sources(self.deps.reads, [i.source for i in looked_up if i.source])
        await self.require_test_accounts(
            context, sorted({a for i in looked_up for a in (i.source, i.destination) if a})
        )

        async def action(uow: UnitOfWork) -> Any:
            return await transfers.run(uow, items)

        return await self.submit(
            "BatchCreateTransfers", request, pb.BatchCreateTransfersResponse, action, _render_batch
        )

    async def ListLedgerEntries(self, request: pb.ListLedgerEntriesRequest, context: Context) -> Any:
        require_id(request.account_id, "account_id")
        await require_account_owner(self.deps.reads, request.account_id)
        size = page_size(request.page_size)
        token = decode_token(request.page_token, 1)
        if token is not None and not token[0].isdigit():
            raise InvalidArgument(FieldViolation("page_token", "not a token this service issued"))
        found = await self.deps.reads.entries_of(request.account_id, int(token[0]) if token else None, size + 1)
        more = len(found) > size
        found = found[:size]
        return pb.ListLedgerEntriesResponse(
            entries=[convert.ledger_entry(r) for r in found],
            next_page_token=encode_token(found[-1].entry_id) if more else "",
        )


def operation_reply(response_type: Any) -> Any:
    def render(result: Any) -> Any:
        op, account = result
        return response_type(operation=convert.bank_operation(op), account=convert.account(account))

    return render


def _batch_items(request: pb.BatchCreateTransfersRequest) -> tuple[list[transfers.Item], set[int]]:
    """Items to run, and the indexes of those whose account ids break the contract's field rules;
    request-level problems (size, references) refuse the whole batch."""
    count = len(request.transfers)
    if not 0 < count <= MAX_BATCH:
        raise InvalidArgument(FieldViolation("transfers", f"between 1 and {MAX_BATCH} items"))
    seen: set[str] = set()
    bad_references = []
    items = []
    unreadable: set[int] = set()
    for index, spec in enumerate(request.transfers):
        if not valid_id(spec.reference) or spec.reference in seen:
            bad_references.append(
                FieldViolation(
                    f"transfers[{index}].reference", "required, unique within the batch, at most 64 characters"
                )
            )
        seen.add(spec.reference)
        v = Validator()
        # The contract's field rules, which the guard leaves to each item (the transfers field is per_item).
        broken = [
            found
            for found in _TRANSFER_RULES.violations(spec, f"transfers[{index}].")
            if not found.field.endswith(".reference")
        ]
        v.violations += broken
        if any(found.field.endswith("_account_id") for found in broken):
            unreadable.add(index)
        v.require(bool(spec.from_account_id), f"transfers[{index}].from_account_id", "required")
        v.require(bool(spec.to_account_id), f"transfers[{index}].to_account_id", "required")
        if spec.from_account_id and spec.from_account_id == spec.to_account_id:
            v.violations.append(FieldViolation(f"transfers[{index}].to_account_id", "must differ from from_account_id"))
        if spec.HasField("amount"):
            v.violations.extend(
                validate_amount(spec.amount.currency_code, spec.amount.minor_units, f"transfers[{index}].amount")
            )
        else:
            v.violations.append(FieldViolation(f"transfers[{index}].amount", "required"))
        problem = InvalidArgument(v.violations) if v.violations else None
        items.append(
            transfers.Item(
                spec.reference,
                spec.from_account_id,
                spec.to_account_id,
                spec.amount.currency_code,
                spec.amount.minor_units,
                problem,
            )
        )
    if bad_references:
        raise InvalidArgument(bad_references[:20])
    return items, unreadable


def _render_batch(results: list[transfers.ItemResult]) -> pb.BatchCreateTransfersResponse:
    reply = pb.BatchCreateTransfersResponse()
    posted = 0
    for result in results:
        if result.error is None:
            posted += 1
            reply.results.add(reference=result.reference, transfer_id=result.transfer_id, status_code="OK")
        else:
            # DomainError kinds are the gRPC code names in lower case.
            reply.results.add(
                reference=result.reference,
                status_code=result.error.kind.upper(),
                reason=result.error.reason,
                message=result.error.message,
            )
    reply.posted_count = posted
    reply.refused_count = len(results) - posted
    return reply

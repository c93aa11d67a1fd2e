"""Accounts RPCs: open, read, list, freeze, unfreeze."""

from __future__ import annotations

from typing import Any

from finmesh.payments.api import convert
from finmesh.payments.api.common import MAX_ID, Context, ServicerBase, page_size, require_id
from finmesh.payments.domain.ledger import AccountKind
from finmesh.payments.store import rows
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import accounts as usecase
from finmesh.payments.usecases.ownership import require_openable
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.auth.context import require_owner
from finmesh.platform.errors import NotFound, Validator
from finmesh.platform.money import validate_currency


class AccountsRpcs(ServicerBase):
    async def OpenAccount(self, request: pb.OpenAccountRequest, context: Context) -> Any:
        if request.kind in convert.OPENABLE_KINDS:
            # Before the field checks: a customer asking for a platform account hears "not yours to open".
            require_openable(convert.OPENABLE_KINDS[request.kind])
        v = Validator()
        v.require(
            request.kind in convert.OPENABLE_KINDS,
            "kind",
            "one of CUSTOMER_WALLET, MERCHANT, PLATFORM_FEE, RISK_RESERVE (clearing accounts open by themselves)",
        )
        v.violations.extend(validate_currency(request.currency_code))
        v.require(
            len(request.owner_id) <= MAX_ID and request.owner_id.isprintable(),
            "owner_id",
            f"at most {MAX_ID} printable characters",
        )
        kind = convert.OPENABLE_KINDS.get(request.kind)
        platform = kind in (AccountKind.PLATFORM_FEE, AccountKind.RISK_RESERVE)
        v.require(
            bool(request.owner_id) != platform,
            "owner_id",
            "platform accounts have no owner" if platform else "required for customer and merchant accounts",
        )
        v.require(not request.channel, "channel", "only clearing accounts have a channel")
        v.raise_if_any()
        assert kind is not None

        async def action(uow: UnitOfWork) -> Any:
            return await usecase.open_account(uow, owner_id=request.owner_id, kind=kind, currency=request.currency_code)

        return await self.submit(
            "OpenAccount",
            request,
            pb.OpenAccountResponse,
            action,
            lambda state: pb.OpenAccountResponse(account=convert.account(state)),
        )

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> Any:
        require_id(request.account_id, "account_id")
        row = await self.deps.reads.account(request.account_id)
        if row is None:
            raise NotFound("ACCOUNT_NOT_FOUND", "account not found", account_id=request.account_id)
        require_owner(row.owner_id, "accounts")
        return pb.GetAccountResponse(account=convert.account(rows.account_state(row)))

    async def ListAccounts(self, request: pb.ListAccountsRequest, context: Context) -> Any:
        require_id(request.owner_id, "owner_id")
        require_owner(request.owner_id, "accounts")  # the authorizer checks it too (OWNED_FIELDS): belt and braces
        size = page_size(request.page_size)
        found = await self.deps.reads.accounts_of(request.owner_id, request.page_token[:MAX_ID], size + 1)
        more = len(found) > size
        found = found[:size]
        return pb.ListAccountsResponse(
            accounts=[convert.account(rows.account_state(r)) for r in found],
            next_page_token=found[-1].account_id if more else "",
        )

    async def FreezeAccount(self, request: pb.FreezeAccountRequest, context: Context) -> Any:
        return await self._set_frozen("FreezeAccount", request, True, pb.FreezeAccountResponse)

    async def UnfreezeAccount(self, request: pb.UnfreezeAccountRequest, context: Context) -> Any:
        return await self._set_frozen("UnfreezeAccount", request, False, pb.UnfreezeAccountResponse)

    async def _set_frozen(self, method: str, request: Any, frozen: bool, response_type: Any) -> Any:
        require_id(request.account_id, "account_id")

        async def action(uow: UnitOfWork) -> Any:
            return await usecase.set_frozen(uow, request.account_id, frozen, request.reason)

        return await self.submit(
            method, request, response_type, action, lambda state: response_type(account=convert.account(state))
        )

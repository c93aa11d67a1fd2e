"""PaymentsService servicer: thin RPC methods grouped by area, sharing one set of dependencies."""

from __future__ import annotations

from finmesh.payments.api.accounts import AccountsRpcs
from finmesh.payments.api.back_office import BackOfficeRpcs
from finmesh.payments.api.common import Dependencies
from finmesh.payments.api.money_movement import MoneyMovementRpcs
from finmesh.payments.api.payments import PaymentRpcs
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc


class PaymentsServicer(AccountsRpcs, PaymentRpcs, MoneyMovementRpcs, BackOfficeRpcs, pb_grpc.PaymentsServiceServicer):
    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps

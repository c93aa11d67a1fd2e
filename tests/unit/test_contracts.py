"""The contracts keep their promises: idempotency keys on mutating RPCs, an access policy on every RPC."""

from __future__ import annotations

import pytest

from finmesh.common.v1 import options_pb2
from finmesh.identity.v1 import identity_service_pb2
from finmesh.notify.v1 import notify_service_pb2
from finmesh.payments.v1 import payments_service_pb2
from finmesh.risk.v1 import risk_service_pb2

SERVICES = [
    identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"],
    notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"],
]
METHODS = [m for s in SERVICES for m in s.methods]
READS = ("Get", "List", "Verify")
# Mutating RPCs whose natural id is their idempotency key.
KEYED_BY_OWN_ID = {
    "AssessPayment": "payment_id",
    "AssessPayments": "checks",
    "DeliverEvent": "event",
    "DeliverEvents": "events",
}


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
def test_every_mutating_rpc_takes_an_idempotency_key(method) -> None:
    if method.name.startswith(READS) or method.name == "RevealPersonalData":
        return
    fields = method.input_type.fields_by_name
    assert "idempotency_key" in fields or KEYED_BY_OWN_ID.get(method.name) in fields


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
def test_every_rpc_declares_who_may_call_it(method) -> None:
    """Least privilege starts in the contract: a permission, or an explicit unauthenticated opt-in."""
    policy = method.GetOptions().Extensions[options_pb2.access]
    assert bool(policy.permission) != policy.allow_unauthenticated

"""Least privilege across the mesh: every RPC of all four services against every role and no token.

Real identity, payments, risk and notify servers with FINMESH_AUTH_MODE=enforce. Each call sends the
method's empty request: what the role table does not grant must be PERMISSION_DENIED (or, without a
token, UNAUTHENTICATED); what it grants must get past authorization (validation may then refuse the
empty request, e.g. INVALID_ARGUMENT).
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import grpc

from finmesh.identity.v1 import identity_service_pb2
from finmesh.notify.v1 import notify_service_pb2
from finmesh.payments.v1 import payments_service_pb2
from finmesh.platform.auth.access import access_policy
from finmesh.platform.auth.roles import ALL_ROLES, ROLE_PERMISSIONS, SERVICE
from finmesh.platform.rpc.guard import reason_of
from finmesh.risk.v1 import risk_service_pb2
from tests.identity.harness import identity_env, md, start_enforcing_services

SERVICES = {
    "identity": identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    "payments": payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    "risk": risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"],
    "notify": notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"],
}
_AUTH_REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def _granted(method, role: str | None) -> bool:
    policy = access_policy(method)
    if policy.allow_unauthenticated:
        return True
    if role is None:
        return False
    return policy.permission in ROLE_PERMISSIONS[role] and (not policy.internal_only or role == SERVICE)


async def test_every_rpc_against_every_role(databases, tmp_path: Path) -> None:
    """Every (RPC, role) pair and every RPC without a token is refused or let through exactly as granted."""
    async with identity_env(databases, tmp_path) as env, AsyncExitStack() as stack:
        targets = {"identity": env.target, **await start_enforcing_services(stack, databases, tmp_path, env.target)}
        tokens: dict[str | None, str | None] = {None: None}
        for role in ALL_ROLES:
            sub = f"service:test-{uuid.uuid4().hex[:6]}" if role == SERVICE else str(uuid.uuid4())
            tokens[role] = await env.mint([role], sub=sub, verified=True)
        problems: list[str] = []
        calls = 0
        for service, descriptor in SERVICES.items():
            channel = grpc.aio.insecure_channel(targets[service])
            stack.push_async_callback(channel.close)
            for method in descriptor.methods:
                request_type = _message_class(method.input_type)
                rpc = channel.unary_unary(
                    f"/{descriptor.full_name}/{method.name}",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=lambda b: b,
                )
                for role, token in tokens.items():
                    calls += 1
                    code, reason = await _call(rpc, request_type(), token)
                    granted = _granted(method, role)
                    who = role or "no token"
                    if granted and code in _AUTH_REFUSALS:
                        problems.append(f"{method.full_name} as {who}: granted but refused {code.name} {reason}")
                    if (
                        not granted
                        and role is None
                        and (code, reason) != (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
                    ):
                        problems.append(f"{method.full_name} without token: {code.name} {reason}")
                    if (
                        not granted
                        and role is not None
                        and (code, reason) != (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
                    ):
                        problems.append(f"{method.full_name} as {who}: not granted but {code.name} {reason}")
        assert not problems, "\n".join(problems)
        assert calls == sum(len(d.methods) for d in SERVICES.values()) * (len(ALL_ROLES) + 1)


async def _call(rpc, request, token: str | None) -> tuple[grpc.StatusCode, str]:
    try:
        await rpc(request, metadata=md(token) if token else None, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), reason_of(error)
    return grpc.StatusCode.OK, ""


def _message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)

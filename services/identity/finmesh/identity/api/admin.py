"""Operator actions on users: roles and risk tiers."""

from __future__ import annotations

import re
from typing import Any

import grpc

from finmesh.identity.api import convert
from finmesh.identity.api.registration import require_user_id
from finmesh.identity.store import mfa, users
from finmesh.identity.usecases import onboarding
from finmesh.identity.usecases.deps import Deps, load_user
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import validate_key

_log = get_logger("finmesh.identity")
# Customer roles follow the user's kind and ROLE_SERVICE belongs to services: only operator roles are granted.
_ASSIGNABLE = {pb.ROLE_SUPPORT: "SUPPORT", pb.ROLE_RISK_OFFICER: "RISK_OFFICER", pb.ROLE_ADMIN: "ADMIN"}
_TIERS = {pb.RISK_TIER_LOW: "LOW", pb.RISK_TIER_MEDIUM: "MEDIUM", pb.RISK_TIER_HIGH: "HIGH"}
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class AdminRpcs:
    deps: Deps

    async def AssignRole(self, request: pb.AssignRoleRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if request.role not in _ASSIGNABLE:
            raise InvalidArgument(FieldViolation("role", "SUPPORT, RISK_OFFICER or ADMIN"))
        role = _ASSIGNABLE[request.role]

        async def op(conn: Any) -> pb.AssignRoleResponse:
            row = await load_user(conn, request.user_id)
            roles = [r for r in row.roles.split(",") if r]
            if role not in roles:
                await users.set_roles(conn, row.user_id, [*roles, role])
            return pb.AssignRoleResponse(user=convert.user(await users.get_user(conn, row.user_id),
                                                           totp_enabled=await mfa.totp_enabled(conn, row.user_id)))

        reply = await d.idem.run("AssignRole", request, pb.AssignRoleResponse, op)
        _log.info("role_assigned", user_id=request.user_id, role=role)
        return reply

    async def SetRiskTier(self, request: pb.SetRiskTierRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        v = Validator()
        v.require(0 < len(request.user_id) <= 36, "user_id", "required")
        v.require(request.tier in _TIERS, "tier", "LOW, MEDIUM or HIGH")
        v.require(bool(_REASON.match(request.reason)), "reason", "an upper-case code, e.g. ONBOARDING or RISK_EVENT")
        v.raise_if_any()
        tier = _TIERS[request.tier]

        async def op(conn: Any) -> pb.SetRiskTierResponse:
            row = await load_user(conn, request.user_id, allow_erased=True)
            await onboarding.write_tier(conn, row.user_id, tier, request.reason)
            totp_on = await mfa.totp_enabled(conn, row.user_id)
            return pb.SetRiskTierResponse(user=convert.user(await users.get_user(conn, row.user_id),
                                                            totp_enabled=totp_on))

        reply = await d.idem.run("SetRiskTier", request, pb.SetRiskTierResponse, op)
        d.on_commit()
        _log.info("risk_tier_set", user_id=request.user_id, tier=tier, reason=request.reason)
        return reply

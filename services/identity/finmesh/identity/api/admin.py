"""AssignRole and SetRiskTier: operator actions on users."""

from __future__ import annotations

import re

from finmesh.identity.api import convert
from finmesh.identity.api.requests import Context, require_user_id
from finmesh.identity.usecases import roles, tiers
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.storage.idempotency import KeyedCall, validate_key

_ASSIGNABLE = {pb.ROLE_SUPPORT: "SUPPORT", pb.ROLE_RISK_OFFICER: "RISK_OFFICER", pb.ROLE_ADMIN: "ADMIN"}
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class AdminRpcs:
    deps: Deps

    async def AssignRole(self, request: pb.AssignRoleRequest, context: Context) -> pb.AssignRoleResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if request.role not in _ASSIGNABLE:
            raise InvalidArgument(FieldViolation("role", "SUPPORT, RISK_OFFICER or ADMIN"))
        return await roles.assign_role(
            d,
            KeyedCall(
                "AssignRole",
                request,
                pb.AssignRoleResponse,
                lambda user: pb.AssignRoleResponse(user=convert.user(user)),
            ),
            request.user_id,
            _ASSIGNABLE[request.role],
        )

    async def SetRiskTier(self, request: pb.SetRiskTierRequest, context: Context) -> pb.SetRiskTierResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        v = Validator()
        v.require(0 < len(request.user_id) <= 36, "user_id", "required")
        v.require(request.tier in convert.TIERS, "tier", "LOW, MEDIUM or HIGH")
        v.require(bool(_REASON.match(request.reason)), "reason", "an upper-case code, e.g. ONBOARDING or RISK_EVENT")
        v.raise_if_any()
        return await tiers.set_risk_tier(
            d,
            KeyedCall(
                "SetRiskTier",
                request,
                pb.SetRiskTierResponse,
                lambda user: pb.SetRiskTierResponse(user=convert.user(user)),
            ),
            request.user_id,
            convert.TIERS[request.tier],
            request.reason,
        )

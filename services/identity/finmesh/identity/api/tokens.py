"""RefreshToken, RevokeToken and GetServiceToken."""

from __future__ import annotations

from finmesh.identity.api import convert
from finmesh.identity.api.requests import Context
from finmesh.identity.usecases import tokens
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.storage.idempotency import KeyedCall, validate_key


class TokenRpcs:
    deps: Deps

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: Context) -> pb.RefreshTokenResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        if not 0 < len(request.refresh_token) <= 200:
            raise InvalidArgument(FieldViolation("refresh_token", "required"))
        return await tokens.refresh(
            d,
            KeyedCall(
                "RefreshToken",
                d.fingerprinted(request, "refresh_token"),
                pb.RefreshTokenResponse,
                lambda pair: pb.RefreshTokenResponse(tokens=convert.token_pair(pair)),
            ),
            request.refresh_token,
        )

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.RevokeTokenResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        if bool(request.refresh_token) == bool(request.user_id):
            raise InvalidArgument(
                [
                    FieldViolation("refresh_token", "give a refresh token or a user id"),
                    FieldViolation("user_id", "give a refresh token or a user id"),
                ]
            )
        if len(request.refresh_token) > 200 or len(request.user_id) > 36:
            raise InvalidArgument(FieldViolation("refresh_token" if request.refresh_token else "user_id", "too long"))
        return await tokens.revoke(
            d,
            KeyedCall(
                "RevokeToken",
                d.fingerprinted(request, "refresh_token"),
                pb.RevokeTokenResponse,
                lambda count: pb.RevokeTokenResponse(revoked_sessions=count),
            ),
            refresh_token=request.refresh_token,
            user_id=request.user_id,
        )

    async def GetServiceToken(self, request: pb.GetServiceTokenRequest, context: Context) -> pb.GetServiceTokenResponse:
        v = Validator()
        v.require(0 < len(request.service) <= 40, "service", "required")
        v.require(0 < len(request.credential) <= 200, "credential", "required")
        v.raise_if_any()
        token = await tokens.service_token(self.deps, request.service, request.credential)
        return pb.GetServiceTokenResponse(
            access_token=token.access_token, expires_at=convert.timestamp(token.expires_at)
        )

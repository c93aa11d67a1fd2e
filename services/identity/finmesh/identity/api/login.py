"""Login and CompleteLogin: password, then the second factor."""

from __future__ import annotations

from finmesh.identity.api import convert
from finmesh.identity.api.client_address import client_address
from finmesh.identity.api.requests import Context, deadline, validate_code_request
from finmesh.identity.domain import passwords
from finmesh.identity.usecases import login
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import Validator
from finmesh.platform.rpc.ratelimit import RateLimited
from finmesh.platform.storage.idempotency import KeyedCall, validate_key


def _challenge(challenge: login.LoginChallenge) -> pb.LoginResponse:
    return pb.LoginResponse(
        challenge_id=challenge.challenge_id,
        totp_accepted=challenge.totp,
        challenge_channel=pb.VERIFICATION_CHANNEL_UNSPECIFIED if challenge.totp else pb.VERIFICATION_CHANNEL_SMS,
    )


class LoginRpcs:
    deps: Deps

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        v = Validator()
        v.require(0 < len(request.login) <= 254, "login", "phone (E.164) or e-mail")
        problem = passwords.problem_with_given(request.password)
        v.require(problem is None, "password", problem or "")
        v.raise_if_any()
        try:
            return await login.login(
                d,
                KeyedCall("Login", d.fingerprinted(request, "login", "password"), pb.LoginResponse, _challenge),
                request.login,
                request.password,
                client_address(context, d.trusted_proxies),
                deadline(context, d),
            )
        except login.TooManyAttempts as refused:
            # RESOURCE_EXHAUSTED with a RetryInfo saying when this address may try again.
            raise RateLimited(
                refused.wait, "TOO_MANY_ATTEMPTS", "too many failed logins from here; retry later"
            ) from None

    async def CompleteLogin(self, request: pb.CompleteLoginRequest, context: Context) -> pb.CompleteLoginResponse:
        d = self.deps
        validate_code_request(request.idempotency_key, request.challenge_id, request.code, "challenge_id")
        return await login.complete(
            d,
            KeyedCall(
                "CompleteLogin",
                d.fingerprinted(request, "code"),
                pb.CompleteLoginResponse,
                lambda tokens: pb.CompleteLoginResponse(tokens=convert.token_pair(tokens)),
            ),
            request.challenge_id,
            request.code,
            client_address(context, d.trusted_proxies),
        )

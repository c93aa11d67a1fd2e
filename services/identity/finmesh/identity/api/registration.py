"""RegisterUser and GetUser."""

from __future__ import annotations

from finmesh.identity.api import convert
from finmesh.identity.api.requests import Context, require_user_id
from finmesh.identity.domain.registration import validate_registration
from finmesh.identity.usecases import users
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.registration import register_user
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.storage.idempotency import KeyedCall


class RegistrationRpcs:
    deps: Deps

    async def RegisterUser(self, request: pb.RegisterUserRequest, context: Context) -> pb.RegisterUserResponse:
        d = self.deps
        reg = validate_registration(
            kind=convert.KINDS.get(request.kind, "?"),
            legal_name=request.legal_name,
            id_number=request.id_number,
            phone=request.phone,
            email=request.email,
            password=request.password,
            locale=request.locale,
            today=d.today(),
        )
        keyed = d.fingerprinted(request, "legal_name", "id_number", "phone", "email", "password")
        return await register_user(
            d,
            KeyedCall(
                "RegisterUser",
                keyed,
                pb.RegisterUserResponse,
                lambda user: pb.RegisterUserResponse(user=convert.user(user)),
            ),
            reg,
        )

    async def GetUser(self, request: pb.GetUserRequest, context: Context) -> pb.GetUserResponse:
        require_user_id(request.user_id)
        return pb.GetUserResponse(user=convert.user(await users.get_user(self.deps, request.user_id)))

"""IdentityService: one servicer composed of small RPC groups that share the same dependencies."""

from __future__ import annotations

from finmesh.identity.api.admin import AdminRpcs
from finmesh.identity.api.keys import KeyRpcs
from finmesh.identity.api.login import LoginRpcs
from finmesh.identity.api.mfa import TotpRpcs
from finmesh.identity.api.personal_data import PersonalDataRpcs
from finmesh.identity.api.registration import RegistrationRpcs
from finmesh.identity.api.tokens import TokenRpcs
from finmesh.identity.api.verification import VerificationRpcs
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc


class IdentityServicer(
    RegistrationRpcs,
    VerificationRpcs,
    LoginRpcs,
    TokenRpcs,
    TotpRpcs,
    KeyRpcs,
    AdminRpcs,
    PersonalDataRpcs,
    pb_grpc.IdentityServiceServicer,
):
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

"""Use cases' results to protobuf: users as other services see them (personal data masked), tokens, times."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from finmesh.identity.usecases.tokens import Tokens
from finmesh.identity.usecases.users import UserView
from finmesh.identity.v1 import identity_service_pb2 as pb

# USER_KIND_UNSPECIFIED has no entry: a registration without a kind is refused, not taken for personal.
KINDS = {
    pb.USER_KIND_PERSONAL: "PERSONAL",
    pb.USER_KIND_ENTERPRISE: "ENTERPRISE",
    pb.USER_KIND_INSTITUTION: "INSTITUTION",
}
TIERS = {pb.RISK_TIER_LOW: "LOW", pb.RISK_TIER_MEDIUM: "MEDIUM", pb.RISK_TIER_HIGH: "HIGH"}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _state(value: str) -> pb.VerificationState.ValueType:
    return pb.VerificationState.Value(f"VERIFICATION_STATE_{value}")


def user(view: UserView) -> pb.User:
    return pb.User(
        user_id=view.user_id,
        kind=pb.UserKind.Value(f"USER_KIND_{view.kind}"),
        legal_name_masked=view.legal_name_masked,
        id_number_masked=view.id_number_masked,
        phone_masked=view.phone_masked,
        email_masked=view.email_masked,
        verifications=pb.Verifications(
            id_number=_state(view.id_number_check),
            contact=_state(view.contact_check),
            real_name=_state(view.real_name_check),
        ),
        may_transact=view.may_transact,
        risk_tier=pb.RiskTier.Value(f"RISK_TIER_{view.risk_tier}"),
        roles=[pb.Role.Value(f"ROLE_{r}") for r in view.roles],
        totp_enabled=view.totp_enabled,
        locale=view.locale,
        created_at=timestamp(view.created_at),
        erased=view.erased,
    )


def token_pair(tokens: Tokens) -> pb.TokenPair:
    return pb.TokenPair(
        access_token=tokens.access_token,
        access_expires_at=timestamp(tokens.access_expires_at),
        refresh_token=tokens.refresh_token,
        refresh_expires_at=timestamp(tokens.refresh_expires_at),
    )

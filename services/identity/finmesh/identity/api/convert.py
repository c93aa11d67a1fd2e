"""Rows to protobuf: users as other services see them (personal data masked)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from finmesh.identity.store.times import utc
from finmesh.identity.v1 import identity_service_pb2 as pb

# USER_KIND_UNSPECIFIED has no entry: a registration without a kind is refused, not taken for personal.
KINDS = {
    pb.USER_KIND_PERSONAL: "PERSONAL",
    pb.USER_KIND_ENTERPRISE: "ENTERPRISE",
    pb.USER_KIND_INSTITUTION: "INSTITUTION",
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(utc(value))
    return stamp


def _state(value: str) -> int:
    return pb.VerificationState.Value(f"VERIFICATION_STATE_{value}")


def user(row: Any, *, totp_enabled: bool = False) -> pb.User:
    checks = (row.id_number_check, row.contact_check, row.real_name_check)
    return pb.User(
        user_id=row.user_id,
        kind=pb.UserKind.Value(f"USER_KIND_{row.kind}"),
        legal_name_masked=row.legal_name_masked,
        id_number_masked=row.id_number_masked,
        phone_masked=row.phone_masked,
        email_masked=row.email_masked,
        verifications=pb.Verifications(
            id_number=_state(row.id_number_check),
            contact=_state(row.contact_check),
            real_name=_state(row.real_name_check),
        ),
        may_transact=all(c == "PASSED" for c in checks) and row.erased_at is None,
        risk_tier=pb.RiskTier.Value(f"RISK_TIER_{row.risk_tier}"),
        roles=[pb.Role.Value(f"ROLE_{r}") for r in row.roles.split(",") if r],
        totp_enabled=totp_enabled,
        locale=row.locale,
        created_at=timestamp(row.created_at),
        erased=row.erased_at is not None,
    )
